from __future__ import annotations

from expman.redact import REDACTED, Redactor, strip_url_credentials


def test_environment_is_captured_by_allowlist_with_secret_names_redacted():
    env = {
        "LANG": "C.UTF-8",
        "HF_TOKEN": "hf_abcdefghijklmnop",
        "EXPMAN_API_TOKEN": "x1234",
        "EXPMAN_RUNS_ROOT": "/r",
        "HOME": "/root",
    }
    captured = Redactor(env).environment(env)
    assert captured == {"LANG": "C.UTF-8", "EXPMAN_API_TOKEN": REDACTED, "EXPMAN_RUNS_ROOT": "/r"}


def test_secret_values_of_the_environment_are_scrubbed_from_text():
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "DB_PASSWORD": "hunter22"}
    text = Redactor(env).text("key=wJalrXUtnFEMI/K7MDENG pw hunter22 done")
    assert text == f"key={REDACTED} pw {REDACTED} done"


def test_token_shapes_are_scrubbed_without_knowing_them():
    text = Redactor({}).text("push https://user:ghp_x@host/repo then hf_abcdefghijklmnop and AKIAABCDEFGHIJKLMNOP")
    assert "ghp_x" not in text and "hf_abc" not in text and "AKIA" not in text and "user:" not in text


def test_remote_urls_lose_credentials():
    assert strip_url_credentials("https://user:ghp_x@github.com/a/b.git") == "https://github.com/a/b.git"
    assert strip_url_credentials("ssh://git@host:22/a.git") == "ssh://host:22/a.git"
    assert strip_url_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"


def test_paths_stay_paths_and_password_abbreviations_still_vanish(tmp_path):
    """Fault 2: PWD matched "pwd" and the working directory was redacted out of every path."""
    agent = tmp_path / "agent.12"
    agent.touch()
    env = {
        "PWD": "/home/alice/project",
        "OLDPWD": "/home/alice",
        "SSH_AUTH_SOCK": str(agent),
        "MYSQL_PWD": "hunter22",
        "DB_PASSWORD": "s3cret-value",
    }
    redactor = Redactor(env)
    text = f"runs in /home/alice/project/runs from /home/alice, agent {agent}; hunter22 s3cret-value"
    assert redactor.text(text) == (
        f"runs in /home/alice/project/runs from /home/alice, agent {agent}; {REDACTED} {REDACTED}"
    )


def test_a_run_under_the_working_directory_keeps_its_paths(make_repo, runs_root, monkeypatch):
    import json

    from expman.cli import main

    from .conftest import only_run

    monkeypatch.setenv("PWD", str(runs_root.parent))
    repo = make_repo({"backend": "process"}, {"mode": "env"})
    assert main(["submit", "-C", str(repo.path)]) == 0
    run = only_run(runs_root)
    assert REDACTED not in (run / "run.json").read_text()
    printed = json.loads((run / "logs" / "stdout.log").read_text().splitlines()[-1])
    assert printed["EXPMAN_OUTPUT_DIR"] == str(run / "output")


def test_a_secret_that_starts_with_a_slash_still_vanishes():
    """Only a path that exists here is kept as a path: base64 keys may begin with "/"."""
    env = {"AWS_SECRET_ACCESS_KEY": "/Zk3aB9xQ2mN8pL4rT6v", "DB_PASSWORD": "/hunter22", "SSH_AUTH_SOCK": "/tmp"}
    text = Redactor(env).text("key /Zk3aB9xQ2mN8pL4rT6v pw /hunter22 sock /tmp")
    assert text == f"key {REDACTED} pw {REDACTED} sock /tmp"
