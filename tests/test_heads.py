"""Heads and pooling found by name: each head's outputs, loss, scores and untuned grades, and that no module outside
the heads' package branches on a head's name."""

import pickle
import re

import numpy as np
import pytest
import torch

from retinopathy.grades import GRADES
from retinopathy.heads import HEADS, get_head, head_of_columns

from conftest import REPO

#: raw outputs a trained head would give an image of each grade, confidently
CONFIDENT = {
    "classification": lambda g: np.eye(5)[g] * 8 - 4,
    "regression": lambda g: np.array([float(g)]),
    "ordinal": lambda g: (g >= np.arange(1, 5)) * 8.0 - 4,
    "multitask": lambda g: np.r_[np.eye(5)[g] * 8 - 4, np.log((g + 0.5) / (4.5 - g))],  # sigmoid range → g
}


def test_every_head_is_registered_with_a_confident_example():
    assert list(HEADS) == ["classification", "regression", "ordinal", "multitask"]
    assert set(CONFIDENT) == set(HEADS)


@pytest.mark.parametrize("name", list(HEADS))
def test_a_head_grades_confident_outputs_as_their_grade(name):
    head = get_head(name)
    raw = torch.tensor(np.stack([CONFIDENT[name](g) for g in GRADES]), dtype=torch.float32)
    if head.y_range:  # fastai's SigmoidRange sits in the network for this head: the raw value is already ranged
        raw = raw.clamp(*head.y_range)
    assert raw.shape == (5, head.n_out)
    outputs = head.activate(raw).numpy()
    assert outputs.shape == (5, len(head.columns))
    assert head.plain_grades(outputs).tolist() == list(GRADES)
    scores = head.scores(outputs)
    assert np.all(np.diff(scores) > 0.5) and np.allclose(scores, GRADES, atol=0.2), scores
    assert np.all(head.confidence(outputs) > 0.8)
    assert head_of_columns(["id", *head.columns]) is head
    table = {c: v for c, v in head.frame_columns(outputs).items()}
    import pandas as pd
    assert np.allclose(head.outputs_of(pd.DataFrame(table)), outputs)


@pytest.mark.parametrize("name", list(HEADS))
def test_a_head_loss_prefers_the_right_grade_weighs_grades_and_pickles(name):
    head = get_head(name)
    targets = torch.tensor([0.0, 2.0, 4.0])
    right = torch.tensor(np.stack([CONFIDENT[name](g) for g in (0, 2, 4)]), dtype=torch.float32)
    wrong = torch.tensor(np.stack([CONFIDENT[name](g) for g in (4, 0, 1)]), dtype=torch.float32)
    if head.categorical_targets:
        targets = targets.long()
    loss = head.loss("mse", None)
    assert float(loss(right, targets)) < float(loss(wrong, targets))
    again = pickle.loads(pickle.dumps(loss))  # fastai pickles the loss with the exported learner
    assert float(again(wrong, targets)) == pytest.approx(float(loss(wrong, targets)))
    uniform, heavy_on_4 = head.loss("mse", np.ones(5)), head.loss("mse", np.array([1.0, 1.0, 1.0, 1.0, 100.0]))
    wrong_on_4, wrong_on_0 = right.clone(), right.clone()
    wrong_on_4[2] = torch.tensor(CONFIDENT[name](0), dtype=torch.float32)  # an eye of grade 4 graded 0
    wrong_on_0[0] = torch.tensor(CONFIDENT[name](4), dtype=torch.float32)
    assert float(heavy_on_4(wrong_on_4, targets)) > float(uniform(wrong_on_4, targets)), \
        "a mistake on a heavily weighted grade costs more"
    assert float(heavy_on_4(wrong_on_0, targets)) < float(uniform(wrong_on_0, targets))


def test_ordinal_soft_targets_and_its_own_rule():
    head = get_head("ordinal")
    outputs = np.array([[0.9, 0.6, 0.4, 0.1], [0.9, 0.2, 0.7, 0.1]])  # the second is not monotone
    assert head.plain_grades(outputs).tolist() == [2, 2], "grade = how many steps are more likely than not"
    assert head.scores(outputs).tolist() == pytest.approx([2.0, 1.9])
    probabilities = head.grade_probabilities(outputs)
    assert probabilities.sum(1) == pytest.approx([1, 1]) and (probabilities >= 0).all()
    assert probabilities[1].tolist() == pytest.approx([0.1, 0.2, 0.5, 0.1, 0.1]), "from the sorted steps"
    assert (probabilities.argmax(1) >= 0).all()
    loss = head.loss("mse", None)
    soft = torch.tensor([2.5])
    at_half = torch.logit(torch.tensor([[0.999, 0.999, 0.5, 0.001]]))
    assert float(loss(at_half, soft)) < float(loss(torch.logit(torch.tensor([[0.999, 0.999, 0.001, 0.001]])), soft))


def test_no_module_outside_the_heads_branches_on_a_head_name():
    pattern = re.compile(r"head\s*(==|!=)|\.head\s+in\s|"
                         r"[\"'](regression|classification|ordinal|multitask)[\"']\s*(==|!=|in\b)")
    offenders = []
    for path in (REPO / "src" / "retinopathy").rglob("*.py"):
        if "heads" in path.relative_to(REPO / "src" / "retinopathy").parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_pooling_layers_by_name_match_the_config_and_fastai():
    from fastai.layers import AdaptiveConcatPool2d

    from retinopathy.config import POOLS
    from retinopathy.training.pooling import POOL_LAYERS, GeM, pool_layer, portable

    assert list(POOL_LAYERS) == list(POOLS)
    x = torch.rand(2, 8, 5, 7)
    assert torch.equal(pool_layer("concat")(x), AdaptiveConcatPool2d()(x))
    assert torch.allclose(pool_layer("avg")(x), x.mean((2, 3), keepdim=True))
    gem = GeM(p=1.0)
    assert torch.allclose(gem(x), x.mean((2, 3), keepdim=True), atol=1e-6)
    gem.p.data.fill_(50.0)
    assert torch.allclose(gem(x), x.amax((2, 3), keepdim=True), rtol=0.1), "a large power approaches max pooling"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3),
                                torch.nn.Sequential(AdaptiveConcatPool2d(), torch.nn.Flatten()))
    before = model(torch.rand(1, 3, 9, 9).requires_grad_(False))
    image = torch.rand(1, 3, 9, 9)
    expected = model(image)
    portable(model)
    assert not any(isinstance(m, AdaptiveConcatPool2d) for m in model.modules()) and before.shape == expected.shape
    assert torch.equal(model(image), expected), "the same numbers with a layer every torch exports"


@pytest.mark.parametrize("pool", ["concat", "gem"])
def test_a_serving_model_with_each_pooling_exports_to_onnx(tmp_path, pool):
    from fastai.vision.all import create_head

    from retinopathy.inference.engines import OnnxRunner
    from retinopathy.inference.export import export_onnx
    from retinopathy.training.pooling import pool_layer
    from retinopathy.training.serving_model import ServingModel

    head = create_head(8, 4, concat_pool=pool == "concat")
    head[0] = pool_layer(pool)
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()), head).eval()
    model = ServingModel(net, torch.zeros(3), torch.ones(3), "ordinal").eval()
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    expected = model(torch.from_numpy(image)).detach().numpy()
    export_onnx(model, 32, tmp_path / "m.onnx")
    assert np.allclose(OnnxRunner(tmp_path / "m.onnx")(image), expected, atol=1e-5)


def test_the_documented_new_head_is_one_class_that_registers_and_grades(tmp_path):
    """docs/extending.md's example head, run as a module of the heads package in a fresh interpreter."""
    import subprocess
    import sys

    text = (REPO / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "snippet.py").write_text(code)
    probe = f"""
import sys, types, numpy as np
import retinopathy.heads as heads
module = types.ModuleType("retinopathy.heads.expected")
module.__package__ = "retinopathy.heads"
exec(open({str(tmp_path / 'snippet.py')!r}).read(), module.__dict__)
head = heads.get_head("expected")
from retinopathy.config import load_config
assert load_config("debug", ["head=expected"]).head == "expected"
print(head.plain_grades(np.array([[0.5, 0, 0, 0, 0.5], [0, 0, 0, 0, 1.0]])).tolist())
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[2,", "4]"], "graded by the expected grade, not the most probable"


def test_the_ordinal_grade_score_and_probabilities_agree():
    """One grade, one score and one set of probabilities: the score's cut at 0.5, 1.5, ... is the grade, the
    grade is the probabilities' median, and a close call is never between two grades other than the answer."""
    from retinopathy.grades import DEFAULT_THRESHOLDS, cut

    head = get_head("ordinal")
    rng = np.random.default_rng(0)
    outputs = rng.uniform(0, 1, (2000, 4))
    grades, scores, probabilities = head.plain_grades(outputs), head.scores(outputs), head.grade_probabilities(outputs)
    assert (cut(scores, DEFAULT_THRESHOLDS) == grades).all()
    median = (np.cumsum(probabilities, 1) >= 0.5).argmax(1)
    assert (median == grades).all()
    assert probabilities.sum(1) == pytest.approx(np.ones(len(outputs)))
    assert head.valid_outputs(outputs).all() and not head.valid_outputs(np.array([[1e10, 0, 0, 0]])).any()


@pytest.mark.parametrize("name", ["classification", "regression", "ordinal", "multitask"])
def test_a_close_call_always_starts_with_the_answer(name):
    from types import SimpleNamespace

    from retinopathy.inference.serve import close_call
    from retinopathy.metrics import GradeRule

    head = get_head(name)
    rng = np.random.default_rng(1)
    raw = rng.uniform(0, 1, (500, len(head.columns)))
    if head.grade_probabilities(raw) is not None and name != "ordinal":
        raw[:, :5] /= raw[:, :5].sum(1, keepdims=True)
    if name in ("regression", "multitask"):
        raw[:, -1] *= 4
    grader = SimpleNamespace(head=head, rule=GradeRule.plain(name))
    calls = 0
    for row in raw:
        call = close_call(grader, row[None])
        if call is not None:
            calls += 1
            assert call[0] == int(grader.rule.grades(row[None])[0]) and abs(call[0] - call[1]) >= 1
    assert calls > 0
