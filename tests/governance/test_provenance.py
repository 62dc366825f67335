"""Signed provenance: every round of a run in a hash-chained, Ed25519-signed log, and
``fedfm verify`` catching any changed byte of the log, a checkpoint, the kept updates or the
exported model."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from collections import OrderedDict

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

import fedfm
from fedfm.cli import main
from fedfm.config import config_to_toml
from fedfm.errors import ConfigError, DataError
from fedfm.governance.kept import load_round
from fedfm.governance.provenance import (
    GENESIS,
    LOG,
    PUBLIC_KEY,
    ProvenanceLog,
    canonical,
    sign,
    state_digest,
)
from fedfm.governance.verify import verify_run
from fedfm.server.observers import RoundRecord
from fedfm.signing import (
    default_key_path,
    fingerprint,
    public_pem,
    raw_public,
    server_key,
    upload_message,
)
from fedfm.state import Update
from tests.conftest import TINY
from tests.test_experiment import _Interrupt


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory, tiny_config_module):
    """A finished two-round run with kept updates (provenance is on by default)."""
    config = tiny_config_module("federation.rounds=2", "governance.keep_updates=true")
    return fedfm.run(config, out=tmp_path_factory.mktemp("runs")).run_dir


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]


def _flip(path, position, value=0x01):
    data = bytearray(path.read_bytes())
    data[position] ^= value
    path.write_bytes(bytes(data))


def _positions(size, seed=0, extra=5):
    """The first, middle and last byte, and ``extra`` seeded random ones."""
    rng = np.random.default_rng(seed)
    return sorted({0, size // 2, size - 1, *map(int, rng.integers(0, size, extra))})


def test_an_untouched_run_verifies(signed_run, capsys):
    assert main(["verify", str(signed_run)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith(f"verified {signed_run}: 4 records")
    assert "consistent with that key, not who wrote it" in out  # no pinned key given


def test_the_log_records_what_the_server_saw(signed_run):
    start, *rounds, export = _records(signed_run)
    assert [start["kind"], *(r["kind"] for r in rounds), export["kind"]] == [
        "start",
        "round",
        "round",
        "export",
    ]
    config_sha = hashlib.sha256((signed_run / "config.toml").read_bytes()).hexdigest()
    assert start["config"] == config_sha
    rows = fedfm.rundir.read_rows(signed_run / "metrics.jsonl", 99)
    for rec, row in zip(rounds, rows, strict=True):
        assert rec["round"] == row["round"] and not rec["redo"]
        assert [c["id"] for c in rec["clients"]] == row["clients"]
        assert rec["strategy"] == "fedavg" and rec["config"] == config_sha
        kept = load_round(signed_run, rec["round"])
        for c in rec["clients"]:  # the decoded update the server aggregated
            assert c["update"] == state_digest(kept.states[c["id"]])
            assert c["examples"] == kept.examples[c["id"]]
        assert rec["before"] == state_digest(kept.before)
        assert rec["aggregate"] == state_digest(kept.after)
    assert rounds[1]["before"] == rounds[0]["aggregate"]
    final = load_file(str(signed_run / "checkpoints/round_00002/state.safetensors"))
    assert export["state"] == rounds[1]["aggregate"] == state_digest(final)
    assert set(export["files"]) == {
        p.relative_to(signed_run / "adapter").as_posix()
        for p in (signed_run / "adapter").rglob("*")
        if p.is_file()
    }
    head = hashlib.sha256((signed_run / LOG).read_bytes().splitlines()[-1]).hexdigest()
    summary = json.loads((signed_run / "summary.json").read_text())
    assert summary["provenance"]["head"] == head and summary["provenance"]["records"] == 4


def test_every_changed_byte_of_the_log_is_caught_and_its_line_named(signed_run, tmp_path):
    run_dir = shutil.copytree(signed_run, tmp_path / "run")
    log = run_dir / LOG
    original = log.read_bytes()
    line_of = np.cumsum([b == 0x0A for b in original]) - np.array(
        [b == 0x0A for b in original]
    )  # the newline ending a line belongs to it
    rng = np.random.default_rng(7)
    for position in range(len(original)):
        value = int(rng.integers(1, 256))  # any change of the byte, seeded
        data = bytearray(original)
        data[position] ^= value
        log.write_bytes(bytes(data))
        result = verify_run(run_dir)
        line = int(line_of[position]) + 1
        assert not result.ok, (position, value)
        assert any(f"{LOG} line {line}:" in p for p in result.problems), (
            position,
            value,
            result.problems,
        )
    log.write_bytes(original)
    assert verify_run(run_dir).ok


@pytest.mark.parametrize(
    "relative",
    [
        "checkpoints/round_00002/state.safetensors",
        "checkpoints/round_00002/progress.json",
        "checkpoints/round_00001/strategy.safetensors",
        "updates/round_00001.safetensors",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/README.md",
        "config.toml",
    ],
)
def test_a_changed_byte_in_a_checkpoint_kept_update_or_the_export_is_caught(
    signed_run, tmp_path, capsys, relative
):
    run_dir = shutil.copytree(signed_run, tmp_path / "run")
    path = run_dir / relative
    for position in _positions(path.stat().st_size, seed=len(relative)):
        _flip(path, position)
        assert main(["verify", str(run_dir)]) == 1, position
        out = capsys.readouterr().out
        assert f"{relative}: changed" in out, out
        assert out.strip().splitlines()[-1].startswith("verification FAILED")
        _flip(path, position)  # back as it was
    assert main(["verify", str(run_dir)]) == 0


def test_a_missing_or_added_exported_file_is_caught(signed_run, tmp_path, capsys):
    run_dir = shutil.copytree(signed_run, tmp_path / "run")
    (run_dir / "adapter" / "labels.json").unlink()
    (run_dir / "adapter" / "extra.bin").write_bytes(b"\0")
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "adapter/labels.json: missing" in out and "adapter/extra.bin: not recorded" in out


def test_a_pinned_public_key_must_be_the_servers(signed_run, tmp_path, capsys):
    server, _ = server_key("")
    right = tmp_path / "server.pub"
    right.write_bytes(public_pem(server.public_key()))
    assert main(["verify", str(signed_run), "--public-key", str(right)]) == 0
    assert "note:" not in capsys.readouterr().out
    wrong = tmp_path / "other.pub"
    wrong.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    assert main(["verify", str(signed_run), "--public-key", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert f"{LOG} line 1: the signature does not verify" in out
    assert f"{PUBLIC_KEY}: not the given --public-key" in out


def test_a_log_and_key_rewritten_together_pass_only_without_a_pinned_key(
    signed_run, tmp_path, capsys
):
    """The threat model: the key beside the log proves consistency, not authorship."""
    run_dir = shutil.copytree(signed_run, tmp_path / "run")
    forger = Ed25519PrivateKey.generate()
    prev, lines = GENESIS, []
    for rec in _records(run_dir):
        rec = {k: v for k, v in rec.items() if k != "sig"}
        if "key" in rec:
            rec["key"] = fingerprint(forger.public_key())
        rec["prev"] = prev
        line = canonical(sign(forger, rec))
        lines.append(line)
        prev = hashlib.sha256(line).hexdigest()
    (run_dir / LOG).write_bytes(b"".join(line + b"\n" for line in lines))
    (run_dir / PUBLIC_KEY).write_bytes(public_pem(forger.public_key()))
    assert main(["verify", str(run_dir)]) == 0
    pinned = tmp_path / "server.pub"
    pinned.write_bytes(public_pem(server_key("")[0].public_key()))
    assert main(["verify", str(run_dir), "--public-key", str(pinned)]) == 1


def test_bad_input_is_one_line_and_exit_2(signed_run, tmp_path, capsys):
    run_dir = shutil.copytree(signed_run, tmp_path / "run")
    (run_dir / PUBLIC_KEY).unlink()
    assert main(["verify", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--public-key" in err
    assert main(["verify", str(run_dir), "--public-key", str(tmp_path / "nope.pem")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (run_dir / LOG).unlink()
    assert main(["verify", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "governance.provenance=true" in err
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_the_default_key_is_made_once_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CONFIG_HOME", str(tmp_path / "home"))
    key, path = server_key("")
    assert path == default_key_path() and path.is_relative_to(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, _ = server_key("")
    assert public_pem(again.public_key()) == public_pem(key.public_key())


def test_a_missing_or_invalid_signing_key_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="governance.signing_key = .*no such file"):
        server_key(str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(DataError, match="cannot be read") as e:
        server_key(str(bad))
    assert "\n" not in str(e.value)


def test_a_run_with_a_missing_signing_key_stops_before_writing(tmp_path, capsys):
    argv = ["run", "--quiet", "--out", str(tmp_path / "runs")]
    for item in [*TINY, f"governance.signing_key={tmp_path / 'missing.pem'}"]:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "governance.signing_key" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_config_module):
    """A three-round run stopped in round 3 (checkpoints and records of rounds 1 and 2)."""
    config = tiny_config_module("federation.rounds=3")
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=out, sinks=[_Interrupt(in_round=3)])
    return out / config.name


def test_a_resumed_run_continues_the_chain_and_marks_redone_rounds(interrupted, tmp_path):
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    assert [r["kind"] for r in _records(run_dir)] == ["start", "round", "round"]
    # As if round 2's checkpoint was lost: the resume redoes round 2, which the log holds.
    shutil.rmtree(run_dir / "checkpoints" / "round_00002")
    before = (run_dir / LOG).read_bytes()
    fedfm.run(resume=run_dir)
    assert (run_dir / LOG).read_bytes().startswith(before)  # appended, never rewritten
    records = _records(run_dir)
    assert [(r["kind"], r.get("round"), r.get("redo")) for r in records] == [
        ("start", None, None),
        ("round", 1, False),
        ("round", 2, False),
        ("resume", None, None),
        ("round", 2, True),
        ("round", 3, False),
        ("export", None, None),
    ]
    assert records[4]["before"] == records[1]["aggregate"]
    assert verify_run(run_dir).ok


def test_resuming_a_run_whose_log_was_changed_is_refused_and_writes_nothing(
    interrupted, tmp_path, capsys
):
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    _flip(run_dir / LOG, 100)
    tampered = (run_dir / LOG).read_bytes()
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{LOG} line 1:" in err and "nothing was written" in err
    assert (run_dir / LOG).read_bytes() == tampered
    assert not (run_dir / "checkpoints" / "round_00003").exists()


def test_the_key_folder_of_the_tests_is_not_the_users():
    assert os.environ["FEDFM_CONFIG_HOME"] in str(default_key_path())


def test_a_clients_signature_must_cover_the_upload_the_server_recorded(tmp_path, tiny_config):
    """Over the network each client signs its upload; a server that records another upload
    for it than the one it signed is caught (the log itself being validly signed)."""
    config = tiny_config()
    (tmp_path / "config.toml").write_text(config_to_toml(config))
    log = ProvenanceLog(tmp_path, config, server_key("")[0])
    client = Ed25519PrivateKey.generate()
    state = OrderedDict(w=torch.zeros(2))

    def signed(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        signature = client.sign(upload_message(config.name, "c0", 1, "", digest))
        return {
            "round": 1,
            "stage": "",
            "public_key": base64.b64encode(raw_public(client)).decode(),
            "signature": base64.b64encode(signature).decode(),
        }

    def record(rnd: int, upload: bytes, signatures: dict) -> RoundRecord:
        update = Update("c0", rnd, state, 3, {})
        return RoundRecord(rnd, state, state, [update], {"c0": upload}, {}, None, signatures)

    log.round(record(1, b"upload", {"c0": signed(b"upload")}))
    result = verify_run(tmp_path)
    assert result.ok and result.client_signatures == 1
    log.round(record(2, b"another", {"c0": signed(b"upload")}))  # not what c0 signed
    assert verify_run(tmp_path).problems == [
        f"{LOG} line 3: client 'c0''s signature does not cover the upload recorded for it"
    ]
