import pytest

from pipeline.config import ConfigError, Recipe, describe, load_recipe


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("# python -m pipeline run r.yaml\nname: x\nonline:\n  beta: 0.2\n")
    r = load_recipe(p, ["online.k=6", "sft.lr=1e-4", "online.selector.params={c: 2}", "eval.seeds=[0]"])
    assert r.name == "x" and r.online.beta == 0.2 and r.online.k == 6 and r.sft.lr == 1e-4
    assert r.online.selector.params == {"c": 2} and r.eval.seeds == [0]
    assert str(r.out) == "runs/x"


@pytest.mark.parametrize("override, message", [
    ("online.bta=0.1", "unknown key 'online.bta'; did you mean 'beta'?"),
    ("onlin.k=3", "unknown key 'onlin'; did you mean 'online'?"),
    ("online.k=three", "'online.k' must be an integer, got 'three'"),
    ("online.k=2.5", "'online.k' must be an integer, got '2.5'"),
    ("online.loss=dpp", "'online.loss' must be one of dpo, ipo, xpo, got 'dpp' (did you mean 'dpo'?)"),
    ("sft.enabled=maybe", "'sft.enabled' must be true or false, got 'maybe'"),
    ("online.beta", "override 'online.beta' must look like key.sub=value"),
    ("eval.seeds=3", "'eval.seeds' must be a list, got int '3'"),
])
def test_override_errors_are_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override])
    assert str(e.value) == message


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  sorce: local\n")
    with pytest.raises(ConfigError, match="unknown key 'data.sorce'; did you mean 'source'"):
        load_recipe(typo)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(listy)


def test_every_field_has_help():
    lines = describe(Recipe)
    assert len(lines) > 50
    assert all(": " in line and not line.split(": ", 1)[1].startswith("(default") for line in lines)


def test_recipe_base_chain_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\n"
                                     "online: {k: 2, n_pool: 16, sources: [{name: rouge}, {name: bertscore}]}\n"
                                     "sft: {steps: 7}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nname: b\n"
                                             "online: {n_pool: 8, sources: [{name: rouge}]}\n")
    r = load_recipe(tmp_path / "sub" / "b.yaml", ["online.k=3"])
    assert (r.name, r.online.k, r.online.n_pool, r.sft.steps) == ("b", 3, 8, 7)
    assert r.online.sources == [{"name": "rouge"}]
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_recipe(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "d.yaml")
