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
