"""Every refusal happens before anything is written: no run directory, image or container."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from expman import errors
from expman.cli import main
from expman.experiment.archive import write_archive
from expman.experiment.git import remote_url
from expman.experiment.plan import plan_submission

from .conftest import Repo, clean_git_env, require


def submit(repo: Repo, *args: str) -> int:
    return main(["submit", "--dry-run", "--backend", "process", "-C", str(repo.path), *args])


def assert_refused(
    capsys: pytest.CaptureFixture[str], runs_root: Path, code: int, code_class: type, *needles: str
) -> str:
    err = capsys.readouterr().err.strip()
    assert code == code_class.exit_code, err
    assert "\n" not in err, f"not one line: {err!r}"
    for needle in needles:
        assert needle in err
    assert not runs_root.exists()
    return err


def test_clean_committed_tree_passes(make_repo, runs_root, capsys):
    repo = make_repo()
    assert submit(repo) == 0
    assert repo.git("rev-parse", "HEAD") in capsys.readouterr().out
    assert not runs_root.exists()  # --dry-run writes nothing


def test_modified_file_is_refused(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.write({"job.py": "print('edited')\n"})
    assert_refused(capsys, runs_root, submit(repo), errors.DirtyTreeError, "job.py", "commit or stash")


def test_staged_file_is_refused(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.write({"new.py": "x = 1\n"})
    repo.git("add", "new.py")
    assert_refused(capsys, runs_root, submit(repo), errors.DirtyTreeError, "new.py")


def test_refusal_lists_at_most_ten_paths(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.commit({f"m{i:02d}.py": "" for i in range(12)})
    repo.write({f"m{i:02d}.py": "changed\n" for i in range(12)})
    err = assert_refused(capsys, runs_root, submit(repo), errors.DirtyTreeError, "m09.py", "and 2 more")
    assert "m10.py" not in err


def test_untracked_file_is_refused_unless_allowed(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.write({"helper.py": "x = 1\n"})
    assert_refused(capsys, runs_root, submit(repo), errors.UntrackedFilesError, "helper.py", "allow_untracked")
    repo.git("stash", "-u")
    repo.set_expman(allow_untracked=True)
    repo.git("stash", "pop")
    assert submit(repo) == 0


def test_ignored_files_are_fine(make_repo, runs_root):
    repo = make_repo()
    repo.write({"cache.pyc": "bytes"})
    assert submit(repo) == 0


def test_wrong_branch_is_refused_naming_both(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.git("checkout", "-q", "-b", "master")
    assert_refused(capsys, runs_root, submit(repo), errors.WrongBranchError, "'master'", "'experiments'")


def test_detached_head_needs_commit_hash(make_repo, runs_root, capsys):
    repo = make_repo()
    head = repo.git("rev-parse", "HEAD")
    repo.git("checkout", "-q", "--detach")
    assert_refused(capsys, runs_root, submit(repo), errors.WrongBranchError, "detached", "--commit-hash")
    assert submit(repo, "--commit-hash", head[:7]) == 0


def test_unknown_ref_is_refused(make_repo, runs_root, capsys):
    repo = make_repo()
    assert_refused(capsys, runs_root, submit(repo, "--commit-hash", "deadbeef"), errors.UnknownRefError, "deadbeef")
    assert_refused(capsys, runs_root, submit(repo, "--commit-hash=--upload-pack=x"), errors.UnknownRefError)


def test_commit_not_on_branch_is_refused(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.git("checkout", "-q", "-b", "feature")
    stray = repo.commit({"stray.py": ""}, "feature work")
    repo.git("checkout", "-q", "experiments")
    assert_refused(capsys, runs_root, submit(repo, "--commit-hash", stray), errors.UnreachableCommitError, stray[:12])


def test_tag_and_short_hash_resolve(make_repo, runs_root, capsys):
    repo = make_repo()
    first = repo.git("rev-parse", "HEAD")
    repo.git("tag", "v1")
    repo.commit({"later.py": ""})
    assert submit(repo, "--commit-hash", "v1") == 0
    assert first in capsys.readouterr().out


def test_require_pushed(make_repo, runs_root, capsys, tmp_path):
    repo = make_repo(expman={"require_pushed": True})
    assert_refused(capsys, runs_root, submit(repo), errors.NotPushedError, "git push")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True, env=clean_git_env())
    repo.git("remote", "add", "origin", str(remote))
    repo.git("push", "-q", "-u", "origin", "experiments")
    assert submit(repo) == 0
    repo.commit({"unpushed.py": ""})
    assert_refused(capsys, runs_root, submit(repo), errors.NotPushedError, "origin/experiments")


def test_lfs_pointer_is_refused(make_repo, runs_root, capsys):
    repo = make_repo()
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 12345\n"
    repo.commit({"weights.bin": pointer, ".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n"})
    assert_refused(capsys, runs_root, submit(repo), errors.UnsupportedContentError, "LFS", "weights.bin")


def test_submodule_is_refused(make_repo, runs_root, capsys):
    repo = make_repo()
    other = make_repo()
    repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(other.path), "vendored")
    repo.git("commit", "-q", "-m", "add submodule")
    assert_refused(capsys, runs_root, submit(repo), errors.UnsupportedContentError, "submodule", "vendored")


def test_git_environment_cannot_redirect_to_another_repository(make_repo, runs_root, monkeypatch, capsys):
    repo = make_repo()
    other = make_repo()
    other.git("checkout", "-q", "-b", "master")
    other.write({"dirty.py": "x"})
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other.path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other.path / ".git" / "index"))
    assert submit(repo) == 0
    assert repo.git("rev-parse", "HEAD") in capsys.readouterr().out


def test_no_redirecting_variable_reaches_git(make_repo, runs_root, monkeypatch, capsys, tmp_path):
    """Every variable that could point git (or GitPython) elsewhere, set at once: the checks,
    the files read, the archive and the remote URL are still those of the repository given."""
    repo = make_repo()
    ours = repo.commit({"sub/module.py": "x = 1\n"}, "ours")
    repo.git("remote", "add", "origin", "https://example.org/ours.git")
    other = make_repo()
    other.git("checkout", "-q", "-b", "master")
    other.commit({"theirs.py": ""}, "theirs")
    other.git("remote", "add", "origin", "https://example.org/theirs.git")
    other.write({"dirty.py": "x"})
    other_git = other.path / ".git"
    redirect = {
        "GIT_DIR": other_git,
        "GIT_WORK_TREE": other.path,
        "GIT_INDEX_FILE": other_git / "index",
        "GIT_COMMON_DIR": other_git,
        "GIT_OBJECT_DIRECTORY": other_git / "objects",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": other_git / "objects",
        "GIT_NAMESPACE": "theirs",
        "GIT_CEILING_DIRECTORIES": repo.path,
        "GIT_DISCOVERY_ACROSS_FILESYSTEM": "0",
    }
    for name, value in redirect.items():
        monkeypatch.setenv(name, str(value))
    assert main(["submit", "--dry-run", "--backend", "process", "-C", str(repo.path / "sub")]) == 0
    assert ours in capsys.readouterr().out
    plan = plan_submission(repo.path / "sub", None, "process", {})
    assert (plan.commit, plan.commit_info.subject) == (ours, "ours")
    write_archive(repo.path, ours, tmp_path / "code.tar")
    with tarfile.open(tmp_path / "code.tar") as tar:
        names = tar.getnames()
    assert "sub/module.py" in names and "theirs.py" not in names
    assert remote_url(repo.path, "origin") == "https://example.org/ours.git"
    assert {name: os.environ[name] for name in redirect} == {k: str(v) for k, v in redirect.items()}


def test_not_a_repository(tmp_path, runs_root, capsys):
    code = main(["submit", "--dry-run", "-C", str(tmp_path)])
    assert code == errors.NotARepositoryError.exit_code
    assert "not inside a git work tree" in capsys.readouterr().err


def test_refusal_exit_codes_are_distinct():
    classes = [
        errors.NotARepositoryError,
        errors.DirtyTreeError,
        errors.UntrackedFilesError,
        errors.WrongBranchError,
        errors.UnknownRefError,
        errors.UnreachableCommitError,
        errors.NotPushedError,
        errors.UnsupportedContentError,
        errors.ConfigError,
        errors.DockerUnavailableError,
    ]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes)


def test_export_ignore_is_refused_naming_the_paths(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.commit({"helpers.py": "x = 1\n", ".gitattributes": "helpers.py export-ignore\n"})
    assert_refused(
        capsys,
        runs_root,
        submit(repo),
        errors.UnsupportedContentError,
        "export-ignore",
        "helpers.py",
        "allow_export_attributes",
    )


def test_export_subst_is_refused_naming_the_paths(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.commit({"version.py": "COMMIT = '$Format:%H$'\n", ".gitattributes": "version.py export-subst\n"})
    assert_refused(capsys, runs_root, submit(repo), errors.UnsupportedContentError, "export-subst", "version.py")


def test_export_attributes_at_any_depth_and_on_directories(make_repo, runs_root, capsys):
    repo = make_repo()
    repo.commit(
        {
            "lib/deep/.gitattributes": "model.py export-ignore\n",
            "lib/deep/model.py": "x = 1\n",
            "lib/deep/other.py": "x = 2\n",
            "vendor/dep.py": "x = 3\n",
            ".gitattributes": "vendor/ export-ignore\n",
        }
    )
    err = assert_refused(
        capsys, runs_root, submit(repo), errors.UnsupportedContentError, "lib/deep/model.py", "vendor/"
    )
    assert "other.py" not in err and "dep.py" not in err


def test_export_attributes_are_read_from_the_commit_not_the_work_tree(make_repo, runs_root, capsys):
    repo = make_repo()
    marked = repo.commit({"helpers.py": "x = 1\n", ".gitattributes": "helpers.py export-ignore\n"})
    repo.git("rm", "-q", ".gitattributes")
    repo.git("commit", "-q", "-m", "no attributes")
    assert submit(repo) == 0
    capsys.readouterr()
    assert_refused(
        capsys, runs_root, submit(repo, "--commit-hash", marked), errors.UnsupportedContentError, "helpers.py"
    )


def test_export_attributes_from_info_attributes_count_too(make_repo, runs_root, capsys):
    """git archive also reads $GIT_DIR/info/attributes: what it would leave out is what counts."""
    repo = make_repo()
    (repo.path / ".git" / "info" / "attributes").write_text("job.py export-ignore\n")
    assert_refused(capsys, runs_root, submit(repo), errors.UnsupportedContentError, "job.py")


def test_unset_and_unrelated_attributes_are_fine(make_repo, runs_root):
    repo = make_repo()
    repo.commit({".gitattributes": "*.py export-ignore\n*.py -export-ignore\n*.txt -text diff\n"})
    assert submit(repo) == 0


def test_allowed_export_attributes_are_carried_for_the_record(make_repo, runs_root):
    repo = make_repo(expman={"allow_export_attributes": True})
    repo.commit(
        {
            "helpers.py": "x = 1\n",
            "version.py": "COMMIT = '$Format:%H$'\n",
            ".gitattributes": "helpers.py export-ignore\nversion.py export-subst\n",
        }
    )
    assert submit(repo) == 0
    plan = plan_submission(repo.path, None, "process", {})
    assert plan.export_attributes == {"export_ignore": ["helpers.py"], "export_subst": ["version.py"]}
    assert main(["submit", "--backend", "process", "-C", str(repo.path)]) == 0
    (run,) = [p for p in runs_root.iterdir() if (p / "run.json").exists()]
    assert json.loads((run / "run.json").read_text())["git"]["export_attributes"] == plan.export_attributes
    assert plan_submission(make_repo().path, None, "process", {}).export_attributes is None


@pytest.fixture(scope="session")
def other_user() -> pwd.struct_passwd:
    """A real user other than the one running the tests, to own a repository."""
    require(os.getuid() == 0, "root (to create a user and chown a repository to it)")
    name = "expman-repo-owner"
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", name], check=True)
    return pwd.getpwnam(name)


def test_repository_of_another_user_names_gits_ownership_check(
    make_repo, runs_root, capsys, other_user, tmp_path, monkeypatch
):
    repo = make_repo()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "global gitconfig"))
    monkeypatch.delenv("SUDO_UID", raising=False)
    subprocess.run(["chown", "-R", f"{other_user.pw_uid}:{other_user.pw_gid}", str(repo.path)], check=True)
    err = assert_refused(
        capsys,
        runs_root,
        submit(repo),
        errors.NotARepositoryError,
        "dubious ownership",
        other_user.pw_name,
        "git config --global --add safe.directory",
    )
    fix = err[err.index("git config --global") :]
    subprocess.run(shlex.split(fix), check=True)
    assert submit(repo) == 0
