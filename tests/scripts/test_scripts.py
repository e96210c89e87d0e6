"""Every training script runs end to end on a tiny budget, writes its outputs, and resumes.

Scripts are imported from their files and run through ``main(argv)`` (one process, no
re-import of torch); ``--help`` runs in a subprocess, as a user would call it.
"""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from deepfn import checkpoint

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
# The committed sample of Multi30k (300 lines per file), so the test needs no download.
MULTI30K = os.path.join(os.path.dirname(SCRIPTS), "tests", "data", "multi30k_sample")
TINY = ["--no-compile", "--no-progress", "--epochs", "1", "--batch-size", "32"]
# A Transformer that trains in seconds on the committed Multi30k sample.
TINY_TRANSFORMER = ["--data-dir", MULTI30K, "--limit", "96", "--vocab-size", "300", "--d-model", "16", "--n-heads", "2",
                    "--n-layers", "1", "--d-ff", "32", "--max-len", "16", "--bleu-subset", "4", "--beam-size", "1",
                    "--batch-size", "16"]


def _script(name):
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)   # the scripts import their shared _common module
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    # Registered as a run script is (as __main__): a saved compiled step names the module of the
    # functions it traced, and loads only where that module is importable.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _outputs(out, config=True):
    rows = [json.loads(line) for line in open(os.path.join(out, "history.jsonl"))]
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"
    if config:
        assert json.load(open(os.path.join(out, "config.json")))["resolved_device"] == "cpu"
    return rows, ckpts


FLAGS = ("--device", "--seed", "--compile", "--no-compile", "--compile-cache", "--no-compile-cache", "--amp",
         "--epochs", "--batch-size", "--lr", "--out", "--resume", "--max-steps")


@pytest.mark.parametrize("name", ["train_mlp", "train_cnn", "train_transformer", "distill", "train_ensemble"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        _script(name).main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    for flag in FLAGS:
        assert flag in text, flag


def test_help_as_a_command():
    # As `make demo` calls it: a file run by the interpreter, from another working directory.
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "train_cnn.py"), "--help"], cwd=os.sep,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "--accumulation-steps" in done.stdout and "--augment" in done.stdout


def test_train_mlp_and_resume(tmp_path, capsys):
    main = _script("train_mlp").main
    out = str(tmp_path / "mlp")
    first = main([*TINY, "--out", out, "--max-steps", "3"])
    rows, ckpts = _outputs(out)
    assert [r["step"] for r in rows] == [3] and rows[0]["partial"] and ckpts == ["ckpt_000000003.safetensors"]
    assert 0.0 <= first["test_acc"] <= 1.0 and first["params"] > 0
    assert "RESULT test_acc=" in capsys.readouterr().out
    assert first["epochs_run"] == 1
    assert json.load(open(os.path.join(out, "config.json")))["threads"] == torch.get_num_threads()
    second = main([*TINY, "--out", out, "--max-steps", "6", "--resume"])
    rows, ckpts = _outputs(out)
    assert [r["step"] for r in rows] == [3, 6] and second["steps"] == 6
    # Two rows, both of epoch 1 (cut short by --max-steps twice): one epoch run, counted from the history.
    assert [r["epoch"] for r in rows] == [1, 1] and second["epochs_run"] == 1
    assert int(checkpoint.load(os.path.join(out, "checkpoints", ckpts[-1])).step) == 6


def test_resume_with_another_thread_count_warns(tmp_path):
    common = _script("train_mlp")._common
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"threads": torch.get_num_threads() + 1}))
    args = _script("train_mlp").build_parser().parse_args(["--no-compile", "--out", str(out), "--resume"])
    with pytest.warns(RuntimeWarning, match=rf"--resume: this process uses {torch.get_num_threads()} CPU threads, "
                                            rf"the run it resumes used {torch.get_num_threads() + 1}.*OMP_NUM_THREADS"):
        common.setup(args)
    assert json.load(open(out / "config.json"))["threads"] == torch.get_num_threads()


def test_resume_with_the_same_thread_count_is_quiet(tmp_path, recwarn):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"threads": torch.get_num_threads()}))
    args = _script("train_mlp").build_parser().parse_args(["--no-compile", "--out", str(out), "--resume"])
    _script("train_mlp")._common.setup(args)
    assert not [w for w in recwarn if "threads" in str(w.message)]


def test_compiled_runs_save_their_steps_unless_told_not_to(tmp_path):
    main = _script("train_mlp").main
    # One hidden layer: less for each of the three runs to trace and compile (the folders are the check).
    flags = ["--compile", "--no-progress", "--epochs", "1", "--batch-size", "32", "--max-steps", "2", "--hidden", "8"]
    main([*flags, "--out", str(tmp_path / "default")])
    saved = tmp_path / "default" / "compiled-steps"   # the default place: inside --out
    # One train step and one eval step: validation (270 rows) and test (360) batches are both
    # padded to the eval batch of 512, so the eval step compiled for one shape only.
    assert len(list(saved.iterdir())) == 2 and all(p.suffix == ".pt2" for p in saved.iterdir())
    elsewhere = tmp_path / "elsewhere"
    main([*flags, "--out", str(tmp_path / "chosen"), "--compile-cache", str(elsewhere)])
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(p.name for p in saved.iterdir())
    assert not (tmp_path / "chosen" / "compiled-steps").exists()
    main([*flags, "--out", str(tmp_path / "off"), "--no-compile-cache"])
    assert not (tmp_path / "off" / "compiled-steps").exists()


def test_compile_cache_without_compiling_is_rejected(tmp_path):
    with pytest.raises(SystemExit, match=r"--compile-cache .*steps are not compiled here .*drop --no-compile"):
        _script("train_mlp").main([*TINY, "--out", str(tmp_path / "x"), "--compile-cache", str(tmp_path / "c")])


def test_compiled_transformer_takes_every_width_with_one_saved_step_each(tmp_path):
    """The default: batches at their own widths, the train and eval steps compiled once each
    with symbolic widths and saved; a second run loads both and compiles nothing."""
    main = _script("train_transformer").main
    flags = ["--no-progress", *TINY_TRANSFORMER, "--epochs", "2", "--compile-cache", str(tmp_path / "steps")]
    first = main([*flags, "--out", str(tmp_path / "a")])
    rows, _ = _outputs(str(tmp_path / "a"))
    assert [r["train_new_signatures"] for r in rows] == [1, 0] and [r["eval_new_signatures"] for r in rows] == [1, 0]
    assert [r["train_compiles"] for r in rows] == [1, 0] and [r["eval_compiles"] for r in rows] == [1, 0]
    saved = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "steps").iterdir()}
    assert len(saved) == 2 and all(name.endswith(".pt2") and name.count(".") == 1 for name in saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # a saved step it cannot use warns
        second = main([*flags, "--out", str(tmp_path / "b")])
    # loaded, not compiled again: the files are the first run's (a compile rewrites its file)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "steps").iterdir()} == saved
    rows, _ = _outputs(str(tmp_path / "b"))
    assert [r["train_compiles"] for r in rows] == [1, 0] and [r["eval_compiles"] for r in rows] == [1, 0]
    assert second["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)


def test_train_cnn_with_augment_accumulation_amp(tmp_path):
    out = str(tmp_path / "cnn")
    args = [*TINY, "--out", out, "--max-steps", "2", "--base-channels", "4", "--augment",
            "--accumulation-steps", "2", "--amp"]
    result = _script("train_cnn").main(args)
    rows, _ = _outputs(out)
    assert result["steps"] == 2 and rows[0]["lr"] > 0
    assert json.load(open(os.path.join(out, "config.json")))["policy"].count("bfloat16") == 1
    again = _script("train_cnn").main([*args[:-4], "--max-steps", "3", "--resume", "--accumulation-steps", "2"])
    assert again["steps"] == 3


def test_train_ensemble(tmp_path):
    out = str(tmp_path / "ens")
    result = _script("train_ensemble").main([*TINY, "--out", out, "--max-steps", "3", "--members", "3",
                                             "--hidden", "16"])
    rows, _ = _outputs(out)
    assert result["members"] == 3 and 0.0 <= result["ensemble_ece"] <= 1.0
    assert "val_member_accuracy" in rows[0]


@pytest.mark.parametrize("augment", ["--no-augment", "--augment"])
def test_distill(tmp_path, augment):
    out = str(tmp_path / "distill")
    result = _script("distill").main([*TINY, "--out", out, "--max-steps", "2", "--teacher-epochs", "1", augment,
                                      "--teacher-base-channels", "4", "--student-hidden", "8", "--student-seeds", "2"])
    for part in ("teacher", "student_seed0", "distilled_seed0", "student_seed1", "distilled_seed1"):
        rows, ckpts = _outputs(os.path.join(out, part), config=False)
        assert rows[0]["step"] == 2 and ckpts
    assert {"teacher_acc", "student_acc", "distilled_acc", "student_test_loss", "distilled_test_loss"} <= set(result)
    assert result["student_params"] < result["teacher_params"]
    assert result["wins"].endswith("/2")


@pytest.mark.parametrize("flags, teacher, students", [([], 5, 1), (["--teacher-smoothing", "1", "--smoothing", "3"], 1, 3)])
def test_distill_teacher_best_epoch_by_its_own_smoothing(tmp_path, monkeypatch, flags, teacher, students):
    module = _script("distill")
    seen = []

    def fit(step, ts, train, **kwargs):
        seen.append(kwargs["smoothing"])
        return ts, None

    monkeypatch.setattr(module, "fit", fit)
    module.main([*TINY, "--out", str(tmp_path / "d"), "--teacher-epochs", "1", "--teacher-base-channels", "4",
                 "--student-hidden", "8", "--student-seeds", "2", *flags])
    assert seen == [teacher] + [students] * 4   # the teacher, then alone/distilled for each seed


def test_distill_shifting_step_feeds_teacher_and_student_the_same_shifted_images():
    import torch

    from deepfn import random
    seen = {}

    def inner(ts, batch, key):
        seen["student"], seen["targets"] = batch
        return ts, {}

    inner.donates = True
    step = _script("distill")._shifting(inner, teacher=lambda images: seen.setdefault("teacher", images).sum((1, 2, 3)))
    images, labels = torch.rand(6, 1, 8, 8), torch.arange(6)
    step(None, (images, labels), random.key(3))
    assert step.donates
    assert torch.equal(seen["student"], seen["teacher"].flatten(1))
    assert not torch.equal(seen["teacher"], images)               # shifted (some image moved)
    assert torch.equal(seen["targets"][0], labels) and seen["targets"][1].shape == (6,)


def test_train_transformer_and_resume(tmp_path):
    main = _script("train_transformer").main
    out = str(tmp_path / "tr")
    args = [*TINY, "--out", out, "--data-dir", MULTI30K, "--limit", "48", "--vocab-size", "300", "--d-model", "16", "--n-heads", "2",
            "--n-layers", "1", "--d-ff", "32", "--max-len", "12", "--bleu-subset", "4", "--beam-size", "2", "--batch-size", "16"]
    result = main([*args, "--max-steps", "1"])
    rows, _ = _outputs(out)
    assert "val_bleu" in rows[0] and result["steps"] == 1 and result["vocab"] <= 300
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    assert len(open(os.path.join(out, "test_translations.txt")).readlines()) == 48
    again = main([*args, "--max-steps", "2", "--resume"])
    assert again["steps"] == 2


def test_train_transformer_downloads_into_the_per_user_folder(tmp_path, monkeypatch):
    """``--download`` without ``--data-dir``: the six files land in $DEEPFN_DATA_DIR/multi30k,
    fetched from a local server that serves the sample (whose digests replace the real ones)."""
    import hashlib
    import importlib

    from tests.data.local_server import serving

    names = sorted(n for n in os.listdir(MULTI30K) if n.endswith(".gz"))
    digests = {n: hashlib.sha256(open(os.path.join(MULTI30K, n), "rb").read()).hexdigest() for n in names}
    monkeypatch.setattr(importlib.import_module("deepfn.data.multi30k"), "SHA256", digests)
    monkeypatch.setenv("DEEPFN_DATA_DIR", str(tmp_path / "data"))
    with serving(MULTI30K) as (server, url):
        monkeypatch.setenv("DEEPFN_MULTI30K_URL", url)
        result = _script("train_transformer").main([
            *TINY, "--out", str(tmp_path / "tr"), "--download", "--limit", "8", "--vocab-size", "100",
            "--d-model", "8", "--n-heads", "1", "--n-layers", "1", "--d-ff", "8", "--max-len", "8",
            "--bleu-subset", "2", "--beam-size", "1", "--batch-size", "8", "--max-steps", "1"])
        assert sorted(server.requests) == sorted("/" + n for n in names)
    assert result["steps"] == 1
    assert sorted(os.listdir(tmp_path / "data" / "multi30k")) == names
