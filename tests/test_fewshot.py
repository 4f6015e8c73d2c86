"""Few-shot classification: data loaders, the task sampler, the task-folded conv-4 and the experiment."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rl_maml.experiments.cli import main
from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.maml import meta_loss, per_task_meta_loss
from rl_maml.nn import Conv4
from rl_maml.tasks.fewshot import DatasetError, FewShotTasks, accuracy
from rl_maml.tasks.miniimagenet import load_miniimagenet
from rl_maml.tasks.omniglot import download_omniglot, load_omniglot, omniglot_splits

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
needs_omniglot = pytest.mark.skipif(not (OMNIGLOT / "images_background.zip").is_file(),
                                    reason="Omniglot is not in ../shared/data/omniglot")


# -- the task-folded conv-4 -------------------------------------------------------------------


@pytest.mark.parametrize("downsample,size,running", [("stride", 28, False), ("maxpool", 20, False),
                                                     ("stride", 28, True), ("maxpool", 20, True)])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("path", ["grouped", "mixed"])
def test_folded_conv4_meta_gradient_equals_per_task_loop(float64, downsample, size, running, first_order, path):
    """Both batched paths of Conv4.forward_tasks (grouped convolutions; dense per-task ones from
    ``per_task_min_batch`` images per task on; the support on one, the query on the other) give
    the per-task loop's second-order meta-gradient (float64)."""
    torch.manual_seed(0)
    channels = 3 if downsample == "maxpool" else 1
    min_batch = {"grouped": 10**9, "mixed": 8}[path]
    net = Conv4(channels, 4, hidden=6, image_size=size, downsample=downsample, running_stats=running,
                per_task_min_batch=min_batch)
    assert hasattr(net, "forward_tasks")
    model = TaskBatchedModel(net, F.cross_entropy)
    params = params_of(net)
    g = torch.Generator().manual_seed(1)
    m, n, q = 3, 5, 8
    support = (torch.randn(m, n, channels, size, size, generator=g), torch.randint(0, 4, (m, n), generator=g))
    query = (torch.randn(m, q, channels, size, size, generator=g), torch.randint(0, 4, (m, q), generator=g))
    if running:  # eval mode: normalise with (non-trivial) running statistics
        net.eval()
        for mod in net.modules():
            if hasattr(mod, "running_mean"):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    inner = InnerLoop(ConstantStepSize(0.3), num_steps=2, first_order=first_order)
    batched = meta_loss(model, params, inner, support, query)
    loop = per_task_meta_loss(model, params, inner, support, query)
    for k in params:
        assert (batched.adapted[k] - loop.adapted[k]).abs().max() < 1e-10, k
    gb = torch.autograd.grad(batched.loss, list(params.values()))
    gl = torch.autograd.grad(loop.loss, list(params.values()))
    for k, a, b in zip(params, gb, gl):
        assert (a - b).abs().max() < 1e-10, k


@pytest.mark.parametrize("per_task_min_batch", [40, 1])  # the dense per-task path must not update per task
def test_running_statistics_are_updated_in_training_and_used_in_eval(per_task_min_batch):
    torch.manual_seed(0)
    net = Conv4(1, 5, hidden=4, running_stats=True, per_task_min_batch=per_task_min_batch)
    model = TaskBatchedModel(net, F.cross_entropy)
    params = {k: v.detach().unsqueeze(0).expand(2, *v.shape) for k, v in params_of(net).items()}
    x = 3 + 2 * torch.randn(2, 10, 1, 28, 28)
    bn = net.features[1]
    model.forward(params, x)
    # One update with momentum 0.1 from (0, 1) towards the tasks' average first-layer statistics.
    h = F.conv2d(x.flatten(0, 1), net.features[0].weight, net.features[0].bias, stride=2, padding=1)
    per_task = h.view(2, 10, *h.shape[1:])
    mean = per_task.mean(dim=(1, 3, 4)).mean(0)
    assert torch.allclose(bn.running_mean, 0.1 * mean, atol=1e-5)
    net.eval()
    a = model.forward(params, x)[0]
    b = model.forward(params, torch.cat([x[:, :5], torch.zeros_like(x[:, 5:])], dim=1))[0]
    assert torch.allclose(a[:5], b[:5])  # eval mode: an image's logits do not depend on its batch


def _tiny_eval_setup():
    from rl_maml.agents import MAMLLearner

    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 14, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    sampler = FewShotTasks(images, ways=3, shots=1, query=2)
    learner = MAMLLearner(Conv4(1, 3, hidden=4, image_size=14), F.cross_entropy,
                          InnerLoop(ConstantStepSize(0.4), 1), 1e-3)
    return learner, sampler


def test_evaluation_tasks_do_not_depend_on_the_chunk_size():
    """eval.chunk_size only bounds memory: the test tasks, hence the accuracies, stay the same
    (tasks are drawn in fixed blocks; 130 crosses a block boundary)."""
    from rl_maml.experiments.fewshot import evaluate_tasks

    learner, sampler = _tiny_eval_setup()
    cpu = torch.device("cpu")
    a = evaluate_tasks(learner, sampler, 130, 2, 7, "t", 100, cpu)
    b = evaluate_tasks(learner, sampler, 130, 2, 7, "t", 17, cpu)
    assert a.shape == (3, 130)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # scoring only some step counts gives those rows, in the order asked for
    c = evaluate_tasks(learner, sampler, 130, 2, 7, "t", 100, cpu, score_steps=[2, 0])
    torch.testing.assert_close(c, a[[2, 0]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="score_steps"):
        evaluate_tasks(learner, sampler, 10, 2, 7, "t", 100, cpu, score_steps=[3])


def test_score_steps_config_is_checked():
    from rl_maml.config import ConfigError
    from rl_maml.experiments.fewshot import FewShotEvalConfig

    with pytest.raises(ConfigError, match="eval.score_steps"):
        FewShotEvalConfig(max_steps=10, score_steps=[11])
    with pytest.raises(ConfigError, match="eval.score_steps"):
        FewShotEvalConfig(score_steps=[])
    assert FewShotEvalConfig(score_steps=[0, 10]).score_steps == [0, 10]


# -- the sampler -------------------------------------------------------------------------------


def coded_images(classes=12, per_class=8, size=6):
    """Pixel (0, 0) holds the class, pixel (0, 1) the example, so samples can be decoded."""
    images = torch.zeros(classes, per_class, size, size, dtype=torch.uint8)
    images[:, :, 0, 0] = torch.arange(classes).view(-1, 1)
    images[:, :, 0, 1] = torch.arange(per_class).view(1, -1)
    return images


def test_sampler_shapes_labels_and_distinct_draws():
    sampler = FewShotTasks(coded_images(), ways=5, shots=2, query=3)
    batch = sampler.sample(7, torch.Generator().manual_seed(0))
    (sx, sy), (qx, qy) = batch.support, batch.query
    assert sx.shape == (7, 10, 1, 6, 6) and qx.shape == (7, 15, 1, 6, 6) and sx.dtype == torch.float32
    assert sy.shape == (7, 10) and qy.shape == (7, 15) and sy.dtype == torch.int64
    raw_s, raw_q = (sx[:, :, 0] * 255).round().long(), (qx[:, :, 0] * 255).round().long()
    for t in range(7):
        classes = batch.tasks["classes"][t]
        assert len(set(classes.tolist())) == 5
        for label in range(5):
            s = raw_s[t][sy[t] == label]
            q = raw_q[t][qy[t] == label]
            # every image of a label comes from that label's class
            assert set(s[:, 0, 0].tolist()) == set(q[:, 0, 0].tolist()) == {classes[label].item()}
            examples = s[:, 0, 1].tolist() + q[:, 0, 1].tolist()
            assert len(set(examples)) == 5  # support and query examples are distinct
    again = sampler.sample(7, torch.Generator().manual_seed(0))
    assert torch.equal(again.support[0], sx) and torch.equal(again.query[1], qy)


def test_sampler_rotates_each_class_and_inverts():
    images = torch.zeros(4, 5, 6, 6, dtype=torch.uint8)
    images[..., 0, 0] = 255  # a marker in the top-left corner
    sampler = FewShotTasks(images, ways=4, shots=1, query=4, rotate=True, invert=True)
    batch = sampler.sample(50, torch.Generator().manual_seed(0))
    rot = batch.tasks["rotations"]
    assert set(rot.unique().tolist()) == {0, 1, 2, 3}
    corners = {0: (0, 0), 1: (5, 0), 2: (5, 5), 3: (0, 5)}  # where rot90 (counter-clockwise) moves (0, 0)
    x = torch.cat([batch.support[0], batch.query[0]], dim=1)[:, :, 0]  # [M, 20, 6, 6]
    y = torch.cat([batch.support[1], batch.query[1]], dim=1)
    for t in range(50):
        for i in range(20):
            r = rot[t, y[t, i]].item()
            assert x[t, i][corners[r]] == 0.0 and x[t, i].sum() == 35.0  # inverted: marker 0, rest 1


def test_sampler_rejects_impossible_tasks():
    with pytest.raises(ValueError, match="exceeds the 8 examples"):
        FewShotTasks(coded_images(), ways=5, shots=5, query=4)
    with pytest.raises(ValueError, match="at least 20 classes"):
        FewShotTasks(coded_images(), ways=20, shots=1, query=1)


def test_accuracy_per_task():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    assert accuracy(logits, torch.tensor([[0, 1], [1, 1]])).tolist() == [1.0, 0.0]


# -- Omniglot ---------------------------------------------------------------------------------


def png_bytes(value=255, size=105):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def write_zip(path, part, chars=2, drawings=3, corrupt=None):
    with zipfile.ZipFile(path, "w") as z:
        for c in range(chars):
            for d in range(drawings):
                name = f"{part}/Alpha/character{c + 1:02d}/{c:04d}_{d + 1:02d}.png"
                z.writestr(name, b"not a png" if name == corrupt else png_bytes())


def test_omniglot_errors_name_the_file_and_the_fix(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"images_background\.zip.*rl-maml download omniglot"):
        load_omniglot(tmp_path, cache)
    write_zip(tmp_path / "images_background.zip", "images_background")
    write_zip(tmp_path / "images_evaluation.zip", "images_evaluation")
    with pytest.raises(DatasetError, match="found 4 characters with \\[3\\] drawings"):
        load_omniglot(tmp_path, cache, verbose=False)
    data = (tmp_path / "images_evaluation.zip").read_bytes()
    (tmp_path / "images_evaluation.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="images_evaluation.zip is not a readable zip.*truncated"):
        load_omniglot(tmp_path, cache, verbose=False)
    write_zip(tmp_path / "images_evaluation.zip", "images_evaluation",
              corrupt="images_evaluation/Alpha/character01/0000_02.png")
    with pytest.raises(DatasetError, match="cannot decode .*character01/0000_02.png"):
        load_omniglot(tmp_path, cache, verbose=False)
    assert not cache.exists() or not list(cache.iterdir())  # nothing half-written into the cache


def test_download_checks_md5_and_leaves_nothing_behind(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "images_background.zip").write_bytes(b"not the official file")
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="MD5 .* expected 68d2efa1b9178cc56df9314c21c6e718"):
        download_omniglot(dest, url_prefix=src.as_uri())
    assert list(dest.iterdir()) == []



def test_download_command_with_a_mirror(tmp_path, capsys):
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "images_background.zip").write_bytes(b"truncated")
    assert main(["download", "omniglot", "--root", str(tmp_path / "d"), "--url-prefix", src.as_uri()]) == 2
    assert "the download is corrupt, retry" in capsys.readouterr().err


def test_split_is_seeded_and_independent_of_listing_order():
    names = tuple(f"images_background/A{i // 20}/character{i % 20:02d}" for i in range(1623))
    a = omniglot_splits(names)
    shuffled = tuple(np.random.default_rng(5).permutation(names))
    b = omniglot_splits(shuffled)
    for split in ("train", "val", "test"):
        assert [names[i] for i in getattr(a, split)] == [shuffled[i] for i in getattr(b, split)]
    assert (len(a.train), len(a.val), len(a.test)) == (1100, 100, 423)
    assert len(set(a.train) | set(a.val) | set(a.test)) == 1623
    assert not np.array_equal(omniglot_splits(names, split_seed=2).test, a.test)


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")


@needs_omniglot
def test_real_omniglot_loads_and_caches(omniglot_cache):
    data = load_omniglot(OMNIGLOT, omniglot_cache, verbose=False)
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == torch.uint8
    assert len(set(data.names)) == 1623 and data.names == tuple(sorted(data.names))
    # background white (255) with dark strokes; inverted by the sampler
    assert data.images.float().mean() > 200
    files = list(omniglot_cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again = load_omniglot(OMNIGLOT, omniglot_cache, verbose=False)
    assert torch.equal(again.images, data.images)


# -- MiniImageNet (synthetic) -----------------------------------------------------------------


def make_miniimagenet(root: Path, layout: str, per_class=(3, 3)):
    rng = np.random.default_rng(0)
    counts = {"train": 3, "val": 2, "test": 2}
    if layout == "csv":
        (root / "images").mkdir(parents=True)
    for split, n in counts.items():
        rows = ["filename,label"]
        for c in range(n):
            label = f"n{split}{c:03d}"
            for i in range(per_class[0] if c else per_class[1]):
                img = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
                if layout == "csv":
                    name = f"{label}{i:08d}.jpg"
                    img.save(root / "images" / name)
                    rows.append(f"{name},{label}")
                else:
                    (root / split / label).mkdir(parents=True, exist_ok=True)
                    img.save(root / split / label / f"{i}.jpg")
        if layout == "csv":
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_miniimagenet_layouts(tmp_path, layout):
    make_miniimagenet(tmp_path / "mini", layout)
    splits = load_miniimagenet(tmp_path / "mini", tmp_path / "cache", verbose=False)
    assert splits["train"].shape == (3, 3, 84, 84, 3) and splits["val"].shape == (2, 3, 84, 84, 3)
    again = load_miniimagenet(tmp_path / "mini", tmp_path / "cache", verbose=False)
    assert torch.equal(again["test"], splits["test"])
    batch = FewShotTasks(splits["train"], ways=2, shots=1, query=2).sample(4, torch.Generator().manual_seed(0))
    assert batch.support[0].shape == (4, 2, 3, 84, 84) and batch.query[0].shape == (4, 4, 3, 84, 84)


def test_miniimagenet_errors(tmp_path):
    with pytest.raises(DatasetError, match="train.csv nor .*train/ exists"):
        load_miniimagenet(tmp_path, tmp_path / "cache")
    make_miniimagenet(tmp_path / "uneven", "folders", per_class=(3, 2))
    with pytest.raises(DatasetError, match="different image counts"):
        load_miniimagenet(tmp_path / "uneven", tmp_path / "cache", verbose=False)
    make_miniimagenet(tmp_path / "gone", "csv")
    next((tmp_path / "gone" / "images").iterdir()).unlink()
    with pytest.raises(DatasetError, match="listed but missing"):
        load_miniimagenet(tmp_path / "gone", tmp_path / "cache", verbose=False)


# -- the experiment through the command line --------------------------------------------------


def test_miniimagenet_train_eval_resume_through_cli(tmp_path, capsys):
    make_miniimagenet(tmp_path / "mini", "csv", per_class=(6, 6))
    common = [f"data.root={tmp_path / 'mini'}", f"data.cache_dir={tmp_path / 'cache'}", "task.num_query=2",
              "model.hidden=4", "train.meta_batch_size=2", "train.checkpoint_every=2", "eval.num_query=3",
              "eval.num_tasks=6", "eval.max_steps=2", "eval.val_every=2", "eval.val_tasks=4", "inner.num_inner_steps=1"]
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(["train", "miniimagenet_5w1s", "--run-dir", str(straight), "train.num_iterations=4", "task.ways=2",
                 *common, "--no-progress"]) == 0
    assert main(["train", "miniimagenet_5w1s", "--run-dir", str(run), "train.num_iterations=2", "task.ways=2",
                 *common, "--no-progress"]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "train.num_iterations=4", "--no-progress"]) == 0
    a = torch.load(run / "checkpoints" / "iter_0000004.pt", weights_only=True)["learners"]["maml"]["module"]
    b = torch.load(straight / "checkpoints" / "iter_0000004.pt", weights_only=True)["learners"]["maml"]["module"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in curve] == [2, 4]
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["steps"] == [0, 1, 2] and results["num_test_tasks"] == 6 and results["query_per_class"] == 3
    # the table says how many query images it scored: the count moves batch norm's statistics
    assert "on 6 test tasks (3 query images per class)" in (run / "eval" / "results.md").read_text()
    acc = results["methods"]["maml"]["mean"]
    assert all(0 <= a <= 100 for a in acc)
    assert (run / "eval" / "accuracy.png").stat().st_size > 10_000
    assert "| MAML |" in capsys.readouterr().out
    # --out: the same numbers, written elsewhere (the accuracy plot still reads the run's validation curve)
    assert main(["eval", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert json.loads((tmp_path / "elsewhere" / "results.json").read_text())["methods"] == results["methods"]
    assert (tmp_path / "elsewhere" / "accuracy.png").stat().st_size > 10_000
    # the validation curve as CSV and plot, against iterations and the wall-clock time of both pieces
    assert main(["curves", str(run), "--out", str(tmp_path / "curves"), "--paper", "50"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "curves" / "validation.csv")))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    assert [float(r["val/accuracy_after_1_steps"]) for r in rows] == [c["val/accuracy_after_1_steps"] for c in curve]
    assert 0 < float(rows[0]["wall_clock_s"]) < float(rows[1]["wall_clock_s"])
    assert (tmp_path / "curves" / "validation.png").stat().st_size > 10_000
    # an exported run resumed elsewhere has only its own validation rows: earlier ones come from --history
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("iteration,val/accuracy_after_1_steps\n1,0.25\n2,0.99\n")
    assert main(["curves", str(run), "--out", str(tmp_path / "c2"), "--history", str(earlier)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "c2" / "validation.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 4] and float(rows[1]["val/accuracy_after_1_steps"]) != 0.99
    # rows of validation.jsonl from before the run's own events take their wall-clock time from the history
    lines = (run / "validation.jsonl").read_text()
    (run / "validation.jsonl").write_text('{"iteration": 1, "val/accuracy_after_1_steps": 0.3}\n' + lines)
    earlier.write_text("iteration,wall_clock_s,val/accuracy_after_1_steps\n1,0.5,0.25\n2,99.0,0.99\n")
    assert main(["curves", str(run), "--out", str(tmp_path / "c4"), "--history", str(earlier)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "c4" / "validation.csv")))
    assert [(int(r["iteration"]), float(r["wall_clock_s"]), float(r["val/accuracy_after_1_steps"])) for r in rows][0] \
        == (1, 0.5, 0.3)
    assert float(rows[1]["wall_clock_s"]) != 99.0  # the run's own time wins
    (run / "validation.jsonl").write_text(lines)
    (run / "validation.jsonl").write_text('{"iteration": 2, "val/acc')  # only a torn line
    capsys.readouterr()
    assert main(["curves", str(run), "--out", str(tmp_path / "c3")]) == 2
    assert "holds no validation rows" in capsys.readouterr().err


def test_keep_best_selects_on_validation_and_exports_the_best_checkpoint(tmp_path, capsys):
    make_miniimagenet(tmp_path / "mini", "csv", per_class=(6, 6))
    common = [f"data.root={tmp_path / 'mini'}", f"data.cache_dir={tmp_path / 'cache'}", "task.num_query=2",
              "model.hidden=4", "train.meta_batch_size=2", "train.checkpoint_every=2", "eval.num_query=3",
              "eval.num_tasks=6", "eval.max_steps=2", "eval.val_tasks=4", "inner.num_inner_steps=1", "task.ways=2"]
    run = tmp_path / "run"
    assert main(["train", "miniimagenet_5w1s", "--run-dir", str(run), "train.num_iterations=2", "eval.val_every=1",
                 *common, "--no-progress"]) == 0
    assert not (run / "checkpoints" / "best.pt").exists()  # off unless asked for
    # switched on when resuming (it changes nothing the run computes)
    assert main(["train", "--resume", "--run-dir", str(run), "train.num_iterations=6", "eval.keep_best=true",
                 "--no-progress"]) == 0
    curve = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()][2:]
    key = "val/accuracy_after_1_steps"
    first_best = max(curve, key=lambda r: (r[key], -r["iteration"]))
    record = json.loads((run / "checkpoints" / "best.json").read_text())
    assert record == {"iteration": first_best["iteration"], "metric": key, "mode": "max", "value": first_best[key]}
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "best"), "--checkpoint",
                 str(run / "checkpoints" / "best.pt")]) == 0
    info = json.loads((tmp_path / "best" / "run.json").read_text())
    assert info["iteration"] == record["iteration"]
    assert info["checkpoint"] == f"checkpoints/iter_{record['iteration']:07d}.pt"
    assert [p.name for p in (tmp_path / "best" / "checkpoints").iterdir()] == [Path(info["checkpoint"]).name]
    assert main(["eval", str(tmp_path / "best")]) == 0
    # a plain export carries the best beside the newest, so a resumed copy goes on selecting
    assert main(["export", str(run), "--out", str(tmp_path / "newest")]) == 0
    info = json.loads((tmp_path / "newest" / "run.json").read_text())
    assert info["iteration"] == 6 and info["best"] == {"checkpoint": "checkpoints/best.pt", **record}
    assert sorted(p.name for p in (tmp_path / "newest" / "checkpoints").iterdir()) == \
        ["best.json", "best.pt", "iter_0000006.pt"]
    # a copy trained on keeps its run.json current, the best included
    import shutil
    shutil.copytree(tmp_path / "newest", tmp_path / "cont")
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "cont"), "train.num_iterations=8",
                 "--no-progress"]) == 0
    info = json.loads((tmp_path / "cont" / "run.json").read_text())
    best = json.loads((tmp_path / "cont" / "checkpoints" / "best.json").read_text())
    assert info["checkpoint"] == "checkpoints/iter_0000008.pt" and info["iteration"] == 8
    assert info["continued_from"] == 6 and info["best"] == {"checkpoint": "checkpoints/best.pt", **best}
    assert main(["export", str(run), "--out", str(tmp_path / "newest"), "--checkpoint",
                 str(run / "checkpoints" / "best.pt")]) == 0  # the same folder, now the best alone
    assert [p.name for p in (tmp_path / "newest" / "checkpoints").iterdir()] == [f"iter_{record['iteration']:07d}.pt"]
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--checkpoint", str(run / "nothing.pt")]) == 2
    assert "nothing.pt does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["train", "miniimagenet_5w1s", "--run-dir", str(tmp_path / "r2"), "eval.keep_best=true",
                 "eval.val_every=0", *common, "--no-progress"]) == 2
    assert "eval.keep_best" in capsys.readouterr().err


def test_fewshot_config_errors(tmp_path, capsys):
    assert main(["train", "omniglot_5w1s", "--run-dir", str(tmp_path / "r"), "task.wayz=5"]) == 2
    assert "did you mean 'task.ways'" in capsys.readouterr().err
    assert main(["train", "omniglot_5w1s", "--run-dir", str(tmp_path / "r2"), f"data.root={tmp_path}",
                 "--no-progress"]) == 2
    assert "images_background.zip" in capsys.readouterr().err


@needs_omniglot
def test_omniglot_few_iterations_learn(tmp_path, omniglot_cache):
    """A short real run: validation accuracy after one inner step rises well above chance (20%)."""
    run = tmp_path / "run"
    assert main(["train", "omniglot_5w1s", "--run-dir", str(run), f"data.root={OMNIGLOT}",
                 f"data.cache_dir={omniglot_cache}", "model.hidden=16", "train.num_iterations=30",
                 "eval.val_every=30", "eval.val_tasks=100", "--no-progress"]) == 0
    curve = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert curve[-1]["val/accuracy_after_1_steps"] > 0.45


def test_mamlpp_preset_trains_and_evaluates(tmp_path, omniglot_cache, capsys):
    """The MAML++ preset end to end on real Omniglot (tiny sizes): its schedules are logged,
    its per-step step sizes learned, and eval scores the steps it was trained for."""
    run = tmp_path / "run"
    assert main(["train", "omniglot_5w1s_mamlpp", "--run-dir", str(run), f"data.root={OMNIGLOT}",
                 f"data.cache_dir={omniglot_cache}", "model.hidden=8", "train.num_iterations=4",
                 "train.meta_batch_size=4", "train.log_every=1", "mamlpp.first_order_iterations=2",
                 "mamlpp.msl_anneal_iterations=2", "eval.val_every=0", "--no-progress"]) == 0
    state = torch.load(run / "checkpoints" / "iter_0000004.pt", weights_only=True)["learners"]["maml"]
    assert state["counters"] == {"iterations": 4}
    assert state["module"]["features.1.weight"].shape == (5, 8)  # per-step batch norm: a row per inner step
    rates = state["extra"]["step_size"]
    assert all(v.shape == (5,) for v in rates.values()) and any((v != 0.1).any() for v in rates.values())
    capsys.readouterr()
    assert main(["eval", str(run), "eval.num_tasks=20", "eval.score_steps=[0,5]"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["steps"] == [0, 5] and len(results["methods"]["maml"]["mean"]) == 2
