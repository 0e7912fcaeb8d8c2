"""Typed adapter options: one pydantic model per adapter, checked from Python, config files and the CLI."""
from __future__ import annotations

import json

import pytest

from fusionrank.errors import AdapterOptionsError, FusionrankError, UnknownNameError
from fusionrank.ingest import ingest
from fusionrank.ingest.adapters import ADAPTERS, adapter_options, get_adapter, options_model, parse_option_strings

VALID = {
    "native": ["limit"],
    "fashion44k": ["limit", "splits"],
    "wands": ["limit", "grades"],  # `limit` first: every built-in adapter's, from LimitedOptions
    "esci": ["limit", "locale", "version", "split", "only_judged", "id_scheme", "grades", "products_file", "examples_file"],
}


def write_native(d, n=5):
    d.mkdir(parents=True, exist_ok=True)
    (d / "products.jsonl").write_text("".join(json.dumps({"product_id": f"p{i}", "title": f"thing {i}"}) + "\n" for i in range(n)))
    (d / "queries.tsv").write_text("query_id\tquery\nq1\tthing\n")
    (d / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\tp0\t2\nq1\tp4\t1\n")
    return d


def test_every_adapter_has_an_options_model():
    assert set(ADAPTERS.names()) == set(VALID)
    for name, keys in VALID.items():
        model = options_model(name)
        assert list(model.model_fields) == keys
        assert model.model_config["extra"] == "forbid"
        assert adapter_options(name) == model()  # every option has a default


def test_native_limit_is_honoured(tmp_path):
    src = write_native(tmp_path / "src")
    cat = ingest(src, tmp_path / "out", adapter="native", check_media=False, adapter_args={"limit": 2})
    assert list(cat.products["product_id"]) == ["p0", "p1"]
    rep = cat.report
    assert (rep["qrels"]["kept"], rep["qrels"]["skipped"], rep["qrels"]["rejected"]) == (1, 1, 0)
    assert rep["adapter_args"] == {"limit": 2}
    cat = ingest(src, tmp_path / "kw", adapter="native", check_media=False, limit=3)  # the keyword style still works
    assert len(cat.products) == 3


@pytest.mark.parametrize("name", sorted(VALID))
def test_misspelt_option_from_python(name, tmp_path):
    src = write_native(tmp_path / "src")
    with pytest.raises(AdapterOptionsError) as ei:
        ingest(src, tmp_path / "out", adapter=name, adapter_args={"limt": 5})
    e = ei.value
    assert isinstance(e, FusionrankError)
    assert (e.adapter, e.unknown, e.valid) == (name, ["limt"], VALID[name])
    msg = str(e)
    assert msg.startswith(f"{name} adapter: unknown option 'limt' (did you mean 'limit'?)")
    assert msg.endswith(f"valid options: {', '.join(VALID[name])}")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    with pytest.raises(AdapterOptionsError, match="unknown option 'limt'"):  # the keyword style too
        ingest(src, tmp_path / "out", adapter=name, limt=5)
    with pytest.raises(AdapterOptionsError, match="unknown option 'limt'"):
        get_adapter(name, src, limt=5)


def test_bad_values_name_the_option():
    with pytest.raises(AdapterOptionsError) as ei:
        adapter_options("esci", {"version": "medium", "limit": "ten", "locale": 5})
    e = ei.value
    assert set(e.invalid) == {"version", "limit", "locale"} and e.unknown == []
    assert "option 'version': Input should be 'small' or 'large', got 'medium'" in str(e)
    assert "option 'limit'" in str(e) and "'ten'" in str(e)
    assert "option 'locale': expected text or list of text or null, got 5" in str(e)
    assert "ValidationError" not in repr(e) and e.__cause__ is None and e.__suppress_context__
    with pytest.raises(AdapterOptionsError, match=r"option 'grades': at E: .*greater than or equal to 0, got -1"):
        adapter_options("wands", {"grades": {"E": -1}})
    with pytest.raises(AdapterOptionsError, match="option 'limit'"):
        adapter_options("native", {"limit": 0})
    with pytest.raises(AdapterOptionsError, match="option 'limit'"):
        adapter_options("native", {"limit": True})


def test_option_given_twice(tmp_path):
    src = write_native(tmp_path / "src")
    with pytest.raises(AdapterOptionsError, match=r"option 'limit': given twice with different values \(2 and 3\)"):
        ingest(src, tmp_path / "out", adapter="native", adapter_args={"limit": 2}, limit=3)
    assert len(ingest(src, tmp_path / "out", adapter="native", check_media=False, adapter_args={"limit": 2}, limit=2).products) == 2


def test_unknown_adapter_lists_valid_names(tmp_path):
    for call in (lambda: ingest(tmp_path, tmp_path / "out", adapter="amazon"), lambda: adapter_options("amazon", {"limit": 1}),
                 lambda: get_adapter("amazon", tmp_path)):
        with pytest.raises(UnknownNameError) as ei:
            call()
        assert ei.value.valid == ADAPTERS.names() == sorted(VALID)
        assert str(ei.value) == "unknown dataset adapter 'amazon'; valid names: esci, fashion44k, native, wands"


def test_parse_option_strings():
    got = parse_option_strings("esci", ["locale=us", "limit=5", "only_judged=true", 'grades={"E": 1, "I": 0}',
                                        "products_file=123", "split=null", "version=small"])
    assert got == {"locale": "us", "limit": 5, "only_judged": True, "grades": {"E": 1, "I": 0}, "products_file": "123",
                   "split": None, "version": "small"}
    assert parse_option_strings("esci", ['locale=["us", "es"]'])["locale"] == ["us", "es"]
    assert parse_option_strings("esci", ["locale=a=b"])["locale"] == "a=b"
    assert parse_option_strings("fashion44k", ['splits=["train"]', "limt=5"]) == {"splits": ["train"], "limt": "5"}
    with pytest.raises(FusionrankError, match="KEY=VALUE, got 'limit'"):
        parse_option_strings("native", ["limit"])
    with pytest.raises(FusionrankError, match="'limit' given twice"):
        parse_option_strings("native", ["limit=1", "limit=2"])


# --- experiment configs and workspaces -------------------------------------------------

def write_config(path, data: str):
    path.write_text(f"[data]\n{data}\n")
    return path


def test_config_adapter_args(tmp_path):
    from fusionrank.experiment import DataConfig, ExperimentConfig

    assert DataConfig().adapter_args == {}
    cfg = ExperimentConfig.load(write_config(tmp_path / "ok.toml", 'adapter = "esci"\nadapter_args = { locale = "us", limit = 5 }'))
    assert cfg.data.adapter_args == {"locale": "us", "limit": 5}
    cfg = ExperimentConfig.load(write_config(tmp_path / "ok2.toml", 'adapter_args = { splits = ["train"] }'))
    assert cfg.data.adapter == "fashion44k" and cfg.data.adapter_args == {"splits": ["train"]}


def test_misspelt_option_in_config_fails_at_load(tmp_path):
    from fusionrank.experiment import ExperimentConfig

    path = write_config(tmp_path / "bad.toml", 'adapter = "fashion44k"\nadapter_args = { limt = 5 }')
    with pytest.raises(FusionrankError) as ei:
        ExperimentConfig.load(path)
    msg = str(ei.value)
    assert str(path) in msg and "ValidationError" not in type(ei.value).__name__
    assert "fashion44k adapter: unknown option 'limt' (did you mean 'limit'?); valid options: limit, splits" in msg

    path = write_config(tmp_path / "bad_value.toml", 'adapter = "esci"\nadapter_args = { version = "medium" }')
    with pytest.raises(FusionrankError, match="option 'version': Input should be 'small' or 'large'"):
        ExperimentConfig.load(path)
    # data.limit is the adapter's limit option: the two must agree
    path = write_config(tmp_path / "clash.toml", "limit = 5\nadapter_args = { limit = 6 }")
    with pytest.raises(FusionrankError, match=r"option 'limit': given twice with different values \(6 and 5\)"):
        ExperimentConfig.load(path)
    path = write_config(tmp_path / "unknown.toml", 'adapter = "amazon"')
    with pytest.raises(FusionrankError, match="unknown dataset adapter 'amazon'; valid names: esci, fashion44k, native, wands"):
        ExperimentConfig.load(path)


def test_misspelt_option_in_config_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from fusionrank.cli import app

    path = write_config(tmp_path / "bad.toml", 'adapter = "wands"\nadapter_args = { grade = { Exact = 1 } }')
    r = CliRunner().invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "model")])
    assert r.exit_code == 2, r.output
    msg = "".join(r.output.split())
    assert "wandsadapter:unknownoption'grade'(didyoumean'grades'?);validoptions:limit,grades" in msg
    assert not (tmp_path / "model").exists()


def test_workspace_passes_adapter_args_and_keys_its_cache_on_them(tmp_path):
    from fusionrank.workspace import Workspace

    src, home = write_native(tmp_path / "src"), tmp_path / "home"
    plain = Workspace(src, "native", home=home)
    assert plain.root.name.startswith("src-full-")  # keyed by the source's content, adapter and options
    assert Workspace(src, "native", None, home, adapter_args={}).root == plain.root

    lim = Workspace(src, "native", home=home, adapter_args={"limit": 2})
    assert lim.limit == 2 and lim.root == Workspace(src, "native", 2, home).root and lim.root.name.startswith("src-first2-")
    assert len(lim.catalog(log=lambda m: None, check_media=False).products) == 2

    f_default = Workspace(src, "fashion44k", home=home)
    f_same = Workspace(src, "fashion44k", home=home, adapter_args={"splits": ["train", "dev"]})
    f_train = Workspace(src, "fashion44k", home=home, adapter_args={"splits": ["train"]})
    assert f_same.root == f_default.root and f_train.root != f_default.root
    assert f_train.adapter_args == {"splits": ["train"]}
    assert Workspace(src, "fashion44k", home=home, adapter_args={"splits": ["train"]}).root == f_train.root

    with pytest.raises(AdapterOptionsError, match="native adapter: unknown option 'limt'"):
        Workspace(src, "native", home=home, adapter_args={"limt": 2})
    with pytest.raises(AdapterOptionsError, match="given twice"):
        Workspace(src, "native", 3, home, adapter_args={"limit": 2})


# --- the command line ------------------------------------------------------------------

def squash(text: str) -> str:
    """Text without whitespace: rich wraps messages to the terminal width."""
    return "".join(text.split())


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from fusionrank.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_options_are_parsed_and_honoured(cli, tmp_path):
    src = write_native(tmp_path / "src")
    r = cli("ingest", src, "-o", tmp_path / "out", "--option", "limit=2", "--no-check-media", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["adapter_args"] == {"limit": 2} and rep["products"]["kept"] == 2 and rep["qrels"]["skipped"] == 1
    r = cli("ingest", src, "-o", tmp_path / "out2", "--option", "limit=2", "--limit", "3")
    assert r.exit_code == 2 and "giventwice" in squash(r.output)
    r = cli("ingest", src, "-o", tmp_path / "out3", "--option", "limit")
    assert r.exit_code == 2 and squash("--option expects KEY=VALUE, got 'limit'") in squash(r.output)
    r = cli("ingest", src, "-o", tmp_path / "out4", "--option", "limit=many")
    assert r.exit_code == 2 and squash("native adapter: option 'limit': Input should be a valid integer") in squash(r.output)


@pytest.mark.parametrize("name", sorted(VALID))
def test_misspelt_option_from_the_cli(cli, name, tmp_path):
    src = write_native(tmp_path / "src")
    r = cli("ingest", src, "-o", tmp_path / "out", "--adapter", name, "--option", "limt=5")
    assert r.exit_code == 2, r.output
    msg = squash(r.output)
    assert squash(f"{name} adapter: unknown option 'limt' (did you mean 'limit'?); valid options: {', '.join(VALID[name])}") in msg
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_cli_list_options(cli):
    from fusionrank.ingest.adapters import options_markdown

    r = cli("ingest", "--list-options", "esci")  # no SOURCE or --out needed
    assert r.exit_code == 0, r.output
    assert r.stdout == options_markdown(["esci"])
    for key in VALID["esci"]:
        assert f"| `{key}` |" in r.stdout
    r = cli("ingest", "--list-options", "all")
    assert r.exit_code == 0 and r.stdout == options_markdown()
    r = cli("ingest", "--list-options", "amazon")
    assert r.exit_code == 2
    assert squash("unknown dataset adapter 'amazon'; valid names: esci, fashion44k, native, wands, or all") in squash(r.output)


# --- the README ------------------------------------------------------------------------

README_START = "<!-- adapter options: generated by `fusionrank ingest --list-options all` -->\n"
README_END = "<!-- end of adapter options -->\n"


def test_readme_lists_every_adapters_options():
    from pathlib import Path

    from fusionrank.ingest.adapters import options_markdown

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    block = text[text.index(README_START) + len(README_START):text.index(README_END)]
    assert block == options_markdown(), (
        "README.md's adapter options are stale: replace the lines between the two markers with the "
        "output of `fusionrank ingest --list-options all`")
    for name, keys in VALID.items():
        assert f"**`{name}`**" in block and all(f"| `{k}` |" in block for k in keys)
