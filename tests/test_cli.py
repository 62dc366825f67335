"""The command line: complete help, one clear line and exit code 2 for bad input."""

from __future__ import annotations

import pytest

from fedfm.cli import main
from fedfm.errors import ConfigError


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["run", "config", "report", "predict", "export", "examples:"]),
        (["run"], ["--set", "--out", "--resume", "--quiet", "SECTION.KEY=VALUE"]),
        (["config"], ["--set"]),
        (["report"], ["run_dir"]),
        (["serve"], ["--address", "--resume", "--out", "tokens_file"]),
        (["join"], ["--token", "--data", "--ca", "--cert", "--key", "--insecure", "--client-id"]),
        (["certs"], ["--host", "--client", "--days", "--force"]),
        (["predict"], ["run_dir", "--text", "--file"]),
        (["export"], ["run_dir", "--merged", "trust_remote_code"]),
    ],
)
def test_help_is_complete(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_config_prints_a_loadable_default(capsys, tmp_path):
    from fedfm.config import ExperimentConfig, load_config

    assert main(["config", "--set", "federation.rounds=4"]) == 0
    path = tmp_path / "c.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == ExperimentConfig().replace(
        federation=ExperimentConfig().federation.__class__(rounds=4)
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federation.roundz=3"], "unknown key federation.roundz"),
        (["federation.lr='fast'"], "federation.lr = 'fast' has the wrong type; expected a number"),
        (
            ["data.train=/nonexistent/train.tsv"],
            "data.train = '/nonexistent/train.tsv': the file does not exist",
        ),
        (["data.text_column=body"], "data.text_column = 'body' is not a column of"),
        (
            ["partition.clients=20000"],
            "partition.clients = 20000 is more than the 10001 training rows",
        ),
        (["data.train_rows=5"], "the training data have a single class ('Sci/Tech',)"),
        (
            ["data.labels=['Business','Sci/Tech','Sports','World','Weather']"],
            "data.labels names the class 'Weather', which has no training rows",
        ),
        (
            ["model.name=/nonexistent/model"],
            "model.name = '/nonexistent/model' could not be loaded",
        ),
        # runtime.type = 'grpc' serves the experiment (fedfm serve): it needs its client list
        (["runtime.type=grpc"], "server.tokens_file is empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, overrides, message):
    argv = ["run", "--quiet", "--out", str(tmp_path)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedfm: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_resume_of_a_non_run_directory(capsys, tmp_path):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "server.tokens_file is empty"),
        (["serve", "--set", "server.tokens_file=/nonexistent"], "does not exist"),
        (["serve", "--set", "server.address=nohost"], "server.address = 'nohost'"),
        (["join", "127.0.0.1:1", "--data", "x.csv", "--client-id", "c0"], "--token is required"),
        (
            ["join", "127.0.0.1:1", "--data", "x.csv", "--client-id", "c0", "--token", "t" * 20],
            "--ca CA.pem is required",
        ),
    ],
)
def test_network_commands_refuse_bad_input_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedfm: error: ") and message in err and "Traceback" not in err


def test_certs_writes_a_ca_server_and_client_certificates(tmp_path):
    from cryptography import x509

    assert main(["certs", str(tmp_path), "--client", "c0"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"ca.pem", "ca.key", "server.pem", "server.key", "c0.pem", "c0.key"}
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0  # private keys: owner only
    cert = x509.load_pem_x509_certificate((tmp_path / "c0.pem").read_bytes())
    assert "CN=c0" in cert.subject.rfc4514_string()


@pytest.mark.parametrize("field", ["train", "test"])
def test_config_refuses_a_missing_data_file(capsys, tmp_path, field):
    missing = tmp_path / "nope.csv"
    assert main(["config", "--set", f"data.{field}={missing}"]) == 2
    err = capsys.readouterr().err
    assert err == f"fedfm: error: data.{field} = {str(missing)!r}: the file does not exist\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_the_command(capsys, where):
    argv = ["config", "--set", "federation.roundz=3"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(ConfigError, match="unknown key federation.roundz"):
        main(argv)  # --debug: the exception (and its traceback) instead of one line
    assert main(argv[1:] if where == "before" else argv[:-1]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_certs_refuses_to_replace_an_existing_ca_without_force(capsys, tmp_path):
    assert main(["certs", str(tmp_path)]) == 0
    ca = (tmp_path / "ca.pem").read_bytes()
    assert main(["certs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ca.pem' exists" in err and "--force" in err
    assert (tmp_path / "ca.pem").read_bytes() == ca  # untouched
    assert main(["certs", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca
