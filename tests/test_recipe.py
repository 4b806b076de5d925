import pytest
import yaml

from sslcli.errors import UserError
from sslcli.catalog import bundled_recipes, find_recipe
from sslcli.recipe import (
    apply_overrides, parse_set, read_yaml, resolve_recipe, resume_conflicts,
)
from sslcli.registry import get_method


def resolve(raw):
    return resolve_recipe(raw, lambda n: get_method(n).Config)


def test_defaults_fill_every_section():
    r = resolve({"method": {"name": "simclr"}})
    assert r.method.temperature == 0.2
    assert r.train.batch_size == 128 and r.optim.name == "sgd" and r.backbone.name == "resnet18"
    assert r.data.source == "synthetic:shapes" and r.augment.crop_scale == [0.2, 1.0]


def test_set_parses_yaml_scalars_and_overrides():
    raw = apply_overrides({"method": {"name": "simclr"}}, [parse_set("optim.lr=0.05"), parse_set("train.channels_last=false"),
                                                           parse_set("augment.crop_scale=[0.3, 0.9]")])
    r = resolve(raw)
    assert r.optim.lr == 0.05 and r.train.channels_last is False and r.augment.crop_scale == [0.3, 0.9]


def test_float_from_yaml11_string_and_int():
    r = resolve({"method": {"name": "simclr"}, "optim": {"weight_decay": "1e-5", "lr": 1}})
    assert r.optim.weight_decay == 1e-5 and isinstance(r.optim.lr, float)


@pytest.mark.parametrize("raw, words", [
    ({"method": {"name": "simclr"}, "optim": {"lrr": 0.1}}, ["optim.lrr", "did you mean 'lr'"]),
    ({"method": {"name": "simclr", "temprature": 0.1}}, ["method.temprature", "did you mean 'temperature'"]),
    ({"method": {"name": "simclr"}, "trian": {}}, ["'trian'", "did you mean 'train'"]),
    ({"method": {"name": "simclr"}, "train": {"batch_size": "big"}}, ["train.batch_size", "an integer"]),
    ({"method": {"name": "simclr"}, "train": {"batch_size": 0}}, ["train.batch_size", "at least 1"]),
    ({"method": {"name": "simclr"}, "train": {"epochs": 2.5}}, ["train.epochs", "an integer"]),
    ({"method": {"name": "simclr"}, "optim": {"name": "sgdd"}}, ["optim.name", "'sgd'"]),
    ({"method": {"name": "simclr"}, "backbone": {"small_input": "yes"}}, ["backbone.small_input", "true or false or 'auto'"]),
    ({"method": {"name": "simclr"}, "augment": {"crop_scale": [0.9, 0.2]}}, ["augment.crop_scale", "low <= high"]),
    ({"method": {"name": "simclr"}, "augment": {"solarize": [0.0, 0.2, 0.4]}}, ["augment.solarize", "a pair [first view"]),
    ({"method": {"name": "simclr"}, "augment": {"blur": [1.0, 1.5]}}, ["augment.blur", "at most 1"]),
    ({"method": {"name": "simclr"}, "augment": {"solarize": "often"}}, ["augment.solarize", "a number or a list of numbers"]),
    ({"method": {"name": "simclrr"}}, ["unknown method 'simclrr'", "did you mean 'simclr'"]),
    ({"optim": {}}, ["names no method"]),
])
def test_bad_recipes_name_the_key_and_fix(raw, words):
    with pytest.raises(UserError) as info:
        resolve(raw)
    for word in words:
        assert word in str(info.value)


def test_set_without_equals_or_section():
    with pytest.raises(UserError, match="has no '='"):
        parse_set("train.epochs")
    with pytest.raises(UserError, match="section.key"):
        parse_set("epochs=3")


def test_every_bundled_recipe_resolves_and_round_trips():
    names = bundled_recipes()
    assert {"simclr", "rotation", "simclr-tiny-imagenet", "rotation-tiny-imagenet"} <= set(names)
    for name in names:
        r = resolve(read_yaml(find_recipe(name)))
        again = resolve(yaml.safe_load(r.to_yaml()))
        assert again == r, name


def test_bundled_recipes_name_no_path_of_ours_and_say_what_data_they_expect():
    from sslcli.catalog import recipe_cards

    named = {"synthetic:shapes", "synthetic:moving-shapes", "cifar10", "cifar100", "stl10"}
    for card in recipe_cards():
        source = (read_yaml(find_recipe(card["name"])).get("data") or {}).get("source", "synthetic:shapes")
        assert source is None or source in named, (card["name"], source)
        assert card["data"], card["name"]
        if source is None:
            assert "--data" in card["data"], card["name"]


def test_a_recipe_for_data_of_ones_own_needs_data(cli, tmp_path):
    r = cli("pretrain", "--recipe", "simclr-tiny-imagenet", "--out", tmp_path / "run")
    assert r.code == 2 and "data.source is null" in r.err and "--data FOLDER" in r.err
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method:\n  name: simclr\n  temperature: [0.1\n")
    with pytest.raises(UserError, match=r"line \d+, column \d+"):
        read_yaml(bad)


def test_missing_recipe_file_and_unknown_bundled_name(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="did you mean 'simclr'"):
        find_recipe("simclrr")


def test_resume_takes_a_key_missing_from_an_older_run_as_its_default():
    # a run saved before optim.trust existed trained with the default; only a change of it conflicts
    old = resolve({"method": {"name": "vicreg"}, "optim": {"name": "lars"}}).to_dict()
    del old["optim"]["trust"]
    assert resume_conflicts(old, resolve({"method": {"name": "vicreg"}, "optim": {"name": "lars"}})) == []
    changed = resolve({"method": {"name": "vicreg"}, "optim": {"name": "lars", "trust": 0.02}})
    assert resume_conflicts(old, changed) == ["optim.trust (run 0.001, now 0.02)"]
