"""Foundation models for federated learning: an FM as teacher (:mod:`.teacher`), as generator
of synthetic training data (:mod:`.synthetic`, GPT-FL) checked before use (:mod:`.verify`), as
labeller of the clients' unlabelled rows (:mod:`.pseudo`), server-side training of the
global model before round 1 on what they produce (:mod:`.warmup`), and distillation of each
round's client ensemble into the aggregate (:mod:`.ensemble`, FedDF).

The FM as starting point is ``[model] init`` (``pretrained`` against ``scratch``), and prompt
sharing is ``[method] type = "prompt"``.
"""
