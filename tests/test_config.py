import pytest

from retinopathy.config import Config, load_config
from retinopathy.errors import UserError

from conftest import REPO, run_script


def test_demo_config_loads_with_its_file_name():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.name == "demo" and config.pretrained is False and config.image_size == 64


def test_every_shipped_config_loads():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert isinstance(load_config(path), Config)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("epochs: 2\nlr: 0.01\n")
    config = load_config(path, ["epochs=5", "lr=1e-3", "pretrained=false", "arch=resnet50", "wd=0", "name=run7"])
    assert (config.epochs, config.lr, config.pretrained, config.arch, config.wd, config.name) == \
        (5, 1e-3, False, "resnet50", 0.0, "run7")
    assert isinstance(config.wd, float)


def test_save_then_load_gives_the_same_config(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml", ["epochs=3", "head=regression"])
    saved = config.save(tmp_path / "out" / "config.yaml")
    assert load_config(saved) == config
    assert not list((tmp_path / "out").glob("*.tmp")), "written atomically, no temp file left"


@pytest.mark.parametrize("content, overrides, message", [
    ("epoch: 3\n", [], r"unknown config key 'epoch' \(did you mean 'epochs'\?\)"),
    ("epochs: three\n", [], r"epochs must be int, not str"),
    ("epochs: 2.5\n", [], r"epochs must be int"),
    ("pretrained: 1\n", [], r"pretrained must be bool"),
    ("head: ordnial\n", [], r"head must be one of classification \| regression \| ordinal \| multitask"),
    ("balance_alpha: 2\n", [], r"balance_alpha must be between 0 and 1"),
    ("epochs: [1\n", [], r"line \d+: not valid YAML"),
    ("base: demo\nepochs: 2\nbase: debug\n", [], r"line 3: not valid YAML \('base' is given twice\)"),
    ("- a\n- b\n", [], r"expected a mapping"),
    ("", ["epochs"], r"override 'epochs' is not key=value"),
    ("", ["batchsize=8"], r"unknown config key 'batchsize' \(did you mean 'batch_size'\?\)"),
    ("", ["n_folds=1"], r"n_folds must be between 2 and 20, not 1"),
    # numbers out of any sane range are refused before anything runs (a billion epochs filled 24 GB in 20 s)
    ("", ["epochs=1000000000"], r"epochs must be between 1 and 1000, not 1000000000"),
    ("", ["lr=nan"], r"lr must be between 1e-07 and 10, not nan"),
    ("", ["lr=-1"], r"lr must be between 1e-07 and 10, not -1.0"),
    ("", ["ps=2"], r"ps must be between 0 and 0.95, not 2.0"),
    ("", ["seed=-1"], r"seed must be between 0 and 4294967295, not -1"),
    ("", ["image_size=1"], r"image_size must be between 32 and 2048, not 1"),
    ("", ["batch_size=0"], r"batch_size must be between 1 and 4096, not 0"),
    # a name is one folder under models/ and submissions/, never a way out of them
    ("", ["name=/abs/path"], r"name '/abs/path' must be a plain folder name"),
    ("", ["name=../../x"], r"name '../../x' must be a plain folder name"),
    ("", ["name=a/b"], r"name 'a/b' must be a plain folder name"),
    ("", ["name="], r"name '' must be a plain folder name"),
    ("", ["name=" + "x" * 300], r"name 'x{60}' must be a plain folder name"),
    # an experiment that learns from its own outputs never settles
    ("", ["name=me", "init_from=models/me"], r"init_from 'models/me' is this experiment itself"),
    ("", ["name=me", "pseudo_labels=me"], r"pseudo_labels 'me' is this experiment itself"),
])
def test_bad_config_gives_one_clear_message(tmp_path, content, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)) + "epochs: *i\n"


@pytest.mark.parametrize("content, message", [
    (LAUGHS.encode(), r"line 1: not valid YAML \(anchors and aliases .* are not allowed"),
    (b"epochs: " + b"[" * 20000 + b"\n", r"nested too deeply|not valid YAML"),
    (b"? [a, b]\n: 1\n", r"a key must be a plain name, not a list"),
    (b"arch: r\xe9snet\n", r"not UTF-8 text \(byte 7 is 0xe9\)"),
    (b"# " + b"x" * 70000 + b"\n", r"more than a config's 64 KB"),
])
def test_a_hostile_config_file_is_one_line_and_cheap(tmp_path, content, message):
    import resource
    import time

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time()
    with pytest.raises(UserError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert time.time() - start < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_a_path_too_long_for_the_file_system_is_one_line(tmp_path):
    long = "x" * 300
    for args in (["--config", f"{long}.yaml"], ["--raw-dir", str(tmp_path / long)],
                 ["--data-dir", str(tmp_path / long)], [f"init_from={tmp_path / long}"],
                 [f"extra_data={tmp_path / long}"]):
        done = run_script("folds.py", *args, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr[-600:])
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_config_file_whose_name_is_no_experiment_name_says_so(tmp_path):
    path = tmp_path / "my config.yaml"
    path.write_text("epochs: 2\n")
    with pytest.raises(UserError, match="an experiment is named after its config file, and 'my config' is not"):
        load_config(path)
    path.write_text("epochs: 2\nname: mine\n")
    assert load_config(path).name == "mine"


def test_missing_config_file():
    with pytest.raises(UserError, match="config file .*nope.yaml not found"):
        load_config("nope.yaml")


def test_script_reports_bad_config_in_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 2\nlearning_rate: 0.1\n")
    result = run_script("train_fold.py", "--config", "bad.yaml", "--fold", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.yaml: unknown config key 'learning_rate'")


def test_raw_dir_option_names_the_dataset_after_its_folder(tmp_path, tiny_aptos):
    import argparse

    from retinopathy import cli
    args = argparse.Namespace(config=str(REPO / "configs" / "demo.yaml"), data_dir=str(tmp_path), overrides=[])
    config, paths = cli.resolve(args, raw_dir=str(tiny_aptos))
    assert config.dataset == tiny_aptos.name and config.synthetic_images == 0
    assert paths.processed(config.dataset_name, "ben", 64) == tmp_path / "processed" / tiny_aptos.name / "ben-64"
    demo, _ = cli.resolve(argparse.Namespace(config="configs/demo.yaml", data_dir=None, overrides=[]))
    assert demo.dataset == "synthetic-aptos2019", "the demo's own data keeps its own folder"


def test_a_config_starts_from_its_base(tmp_path):
    (tmp_path / "parent.yaml").write_text("arch: resnet50\nepochs: 7\nlr: 0.01\n")
    (tmp_path / "child.yaml").write_text("base: parent\nepochs: 2\n")
    child = load_config(tmp_path / "child.yaml", ["lr=0.5"])
    assert (child.name, child.arch, child.epochs, child.lr) == ("child", "resnet50", 2, 0.5), \
        "own file name, the base's arch, its own epochs, the override's lr"
    debug = load_config(REPO / "configs" / "debug.yaml")
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert (debug.epochs, debug.image_size, debug.head, debug.balance) == (1, 32, demo.head, demo.balance)
    assert debug.dataset != demo.dataset, "the debug run synthesizes into its own folder"


@pytest.mark.parametrize("content, message", [
    ("base: nope\n", r"child.yaml: base config 'nope' not found"),
    ("base: child\n", r"base 'child' leads back to itself"),
])
def test_a_bad_base_is_one_line(tmp_path, content, message):
    (tmp_path / "child.yaml").write_text(content)
    with pytest.raises(UserError, match=message):
        load_config(tmp_path / "child.yaml")


def test_every_shipped_config_builds_its_learner_on_cpu(tiny_aptos, tmp_path):
    """Every preset instantiated for real (tiny data, 32 px; weights off, as no hub is reachable), so a broken
    config fails here and not on a rented GPU."""
    from retinopathy.data.folds import make_folds, training_table
    from retinopathy.experiment import Experiment
    from retinopathy.heads import get_head
    from retinopathy.paths import Paths
    from retinopathy.preprocessing.stage import preprocess_dataset
    from retinopathy.training.dataloaders import build_dataloaders
    from retinopathy.training.models import build_learner

    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path, [f"raw_dir={tiny_aptos}", "image_size=32", "batch_size=8", "num_workers=0",
                                    "pretrained=false", "synthetic_images=0"])
        experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
        preprocess_dataset(experiment.raw_dir, experiment.processed_dir, config.preprocess, 32, workers=1,
                           progress=False)
        make_folds(experiment, verbose=False)
        learn = build_learner(build_dataloaders(training_table(experiment), experiment, 0), experiment,
                              experiment.fold_dir(0))
        xb, yb = learn.dls.one_batch()
        out = learn.model.eval()(xb)
        assert out.shape == (len(xb), get_head(config.head).n_out), path.name
        assert float(learn.loss_func(out, yb)) >= 0, path.name


def test_keys_are_grouped_by_stage_and_their_metadata_decides_the_fingerprint(tmp_path):
    import dataclasses

    from retinopathy.config import GROUPS, Config, config_keys_help

    fields = dataclasses.fields(Config)
    assert all(f.metadata["group"] in GROUPS for f in fields)
    text = config_keys_help()
    assert [line.strip(" :") for line in text.splitlines() if line.startswith(" ") and line.endswith(":")
            and not line.startswith("  ")] == list(GROUPS), "--help lists the keys stage by stage"
    assert text.index(" model:") < text.index("  arch=") < text.index(" training:") < text.index("  epochs=")
    base = load_config("debug")
    for f in fields:
        changed = {"str": "x-other", "int": 3, "float": 0.25, "bool": not getattr(base, f.name)}[f.type]
        if f.metadata["choices"]:
            changed = next(c for c in f.metadata["choices"] if c != getattr(base, f.name))
        if f.metadata["bounds"] and not f.metadata["bounds"][0] <= changed <= f.metadata["bounds"][1]:
            changed = f.metadata["bounds"][1]  # a value in the key's range, other than the default
        changed = {"competition": "eyepacs2015", "lr_find": "pick", "loggers": "tensorboard"}.get(f.name, changed)
        # the store loader takes batch augmentation alone
        reference = base.replace(augment_on="batch") if f.name == "loader" else base
        other = reference.replace(**{f.name: changed})
        assert (other.fingerprint == reference.fingerprint) == (f.metadata["fingerprint"] == "never"), f.name
    assert base.replace(pool="concat").fingerprint == base.fingerprint, "a key added later counts only when set"
    assert "pool" not in base.model_settings() and "pool" in base.replace(pool="gem").model_settings()


def test_a_config_may_nest_its_keys_under_their_stages(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("base: debug\narch: resnet18\nepochs: 2\nhead: ordinal\ntta: true\n")
    nested.write_text("base: debug\nmodel:\n  arch: resnet18\n  head: ordinal\ntraining:\n  epochs: 2\n"
                      "prediction:\n  tta: true\n")
    assert load_config(nested).replace(name="flat") == load_config(flat)


def test_help_lists_the_chosen_configs_values(tmp_path):
    done = run_script("train.py", "--config", "aptos_cpu", "epochs=7", "--help", cwd=tmp_path)
    assert done.returncode == 0
    chosen = load_config("aptos_cpu", ["epochs=7"])
    assert f"  arch={chosen.arch}  " in done.stdout and "  epochs=7  " in done.stdout
    assert f"(built-in default {Config().arch})" in done.stdout and "config 'aptos_cpu'" in done.stdout
