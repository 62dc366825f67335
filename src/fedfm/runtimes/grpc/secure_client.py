"""The gRPC client's secure-aggregation stages (:class:`SecureStages`, a part of
:class:`~fedfm.runtimes.grpc.client.NetworkClient`): advertise signed keys, share keys, sign the
survivors (consistency), unmask, or leave the round and say why. The masked input is sent by
the client's fit (stage ``masked``).
"""

from __future__ import annotations

import contextlib
import logging
import time

from fedfm.errors import NetworkError, ProtocolError
from fedfm.privacy.secagg import (
    ABORT,
    SecAggClient,
    decode_message,
    encode_message,
    secagg_ring,
)

log = logging.getLogger("fedfm.runtimes.grpc.client")


class SecureStages:
    """The secure-aggregation stages of a network client (uses its download, upload, config,
    policy, signing key and trusted keys)."""

    _secagg: SecAggClient | None
    _abandoned: str

    def _protocol(self, reply) -> SecAggClient | None:
        """This round's protocol state: made at the "keys" stage, None if we never had it (this
        process started after the round's key sharing: the server drops us from the round)."""
        protocol = self._secagg
        if protocol is None or protocol.session != reply.secagg_session:
            if self._abandoned == reply.secagg_session:
                time.sleep(reply.wait_seconds or 0.5)
            else:
                self._abandon(reply, "the round's key sharing began before this process joined")
            return None
        return protocol

    def _abandon(self, reply, error: Exception | str) -> None:
        """Leave this round's protocol (a message we refuse, a stage that closed meanwhile, a
        round that began before we joined) and tell the server, which counts us as dropped
        instead of waiting for us; we wait for the next round."""
        log.warning(
            "round %d: leaving secure aggregation (%s): %s", reply.round, reply.stage, error
        )
        self._secagg, self._abandoned = None, reply.secagg_session
        notice = encode_message(
            {
                "type": ABORT,
                "session": reply.secagg_session,
                "client": self.client_id,
                "reason": str(error)[:500],
            }
        )
        with contextlib.suppress(NetworkError):  # the stage may be closed already
            self.upload(reply.round, notice, reply.chunk_size or (1 << 20), stage=reply.stage)

    def _secagg_message(self, reply) -> dict:
        blob = self.download(reply.round, "secagg", reply.secagg_size, reply.secagg_sha256)
        return decode_message(blob)

    def _secagg_step(self, app, reply) -> None:
        """Answer one secure-aggregation stage: advertise keys, share keys, sign the survivors
        (consistency), or unmask."""
        rnd, stage = reply.round, reply.stage
        try:
            if stage == "keys":
                num_params = sum(t.numel() for t in app.template.values())
                modulus_bits, fraction_bits = secagg_ring(self.config, num_params)
                dimension = num_params + 2  # + w·loss, w
                self._secagg = SecAggClient(
                    self.client_id,
                    dimension,
                    fraction_bits=fraction_bits,
                    modulus_bits=modulus_bits,
                    session=reply.secagg_session,
                    min_threshold=self.policy.min_threshold,
                    signing_key=self.signing_key,
                    trusted=self.trusted,
                )
                message = self._secagg.advertise_keys()
            elif stage in ("shares", "consistency", "unmask"):
                protocol = self._protocol(reply)
                if protocol is None:
                    return
                inbound = self._secagg_message(reply)
                answer = {
                    "shares": protocol.share_keys,
                    "consistency": protocol.consistency,
                    "unmask": protocol.unmask,
                }[stage]
                message = answer(inbound)
            else:
                raise ProtocolError(f"unknown secure-aggregation stage {stage!r}")
        except (NetworkError, ProtocolError) as e:
            self._abandon(reply, e)
            return
        accepted, reason = self.upload(
            rnd, encode_message(message), reply.chunk_size or (1 << 20), stage=stage
        )
        if not accepted:
            log.warning("round %d: the server refused our %s message: %s", rnd, stage, reason)
