"""The documentation site builds with warnings as errors, and its generated pages list what gradwise has."""

import importlib
import importlib.util
import inspect
import os
import pathlib
import subprocess
import sys

import pytest

import gradwise as gw
from script_loader import load_script

ROOT = pathlib.Path(__file__).parents[1]
DOCS = ROOT / "docs"


def load_generator():
    return load_script(DOCS / "gen_optimizers.py", "gen_optimizers")


def test_generated_reference_covers_every_registered_name_and_option():
    gen = load_generator()
    text = gen.optimizer_reference()
    for e in gw.entries():
        assert f"| [`{e.name}`](#{e.name}) | `{e.cls.__name__}` |" in text
        assert f"## {e.name} {{#{e.name}}}" in text
    options = gen.options_reference()
    for key in ("cautious", "grokfast", "clip_grad_norm", "state_bits", "nonfinite", "maximize"):
        assert f"| `{key}` |" in options
    api = gen.optimizer_api()
    assert api.count(":::") == len({e.cls for e in gw.entries()})
    assert (DOCS / "optimizers.md").read_text().count(gen.MARKER) == 1


def test_hook_replaces_only_its_markers():
    gen = load_generator()
    assert gen.on_page_markdown("# plain page\n", page=None) == "# plain page\n"
    assert gen.MARKER not in gen.on_page_markdown(f"a\n{gen.MARKER}\nb", page=None)


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed (pip install mkdocs mkdocs-material 'mkdocstrings[python]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    optimizers = (site / "optimizers" / "index.html").read_text()
    for name in gw.available():
        assert f'id="{name}"' in optimizers, name
    api = (site / "api" / "optim" / "index.html").read_text()
    for e in gw.entries():
        assert f'id="{e.cls.__module__}.{e.cls.__qualname__}"' in api, e.name
    assert 'id="gradwise.layerwise_lr_decay"' in (site / "api" / "gradwise" / "index.html").read_text()
    which = (site / "which-optimizer" / "index.html").read_text()
    assert "lab results: generated" not in which
    for name in load_lab_summary().load()["optimizers"]:
        assert f"<code>{name}</code>" in which, name


def migration_rows():
    rows = []
    for line in (DOCS / "migration.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[2].startswith("`") and cells[0] != "from":
            rows.append(cells)
    return rows


def test_migration_tables_name_real_arguments():
    """Every gradwise argument in the migration guide exists; so does every source argument whose package is here."""
    rows = migration_rows()
    assert len(rows) >= 20
    checked_sources = 0
    for source, theirs, cls, ours, _ in rows:
        gw_cls = getattr(gw, cls.strip("`"))
        if ours != "—":
            assert ours.strip("`") in inspect.signature(gw_cls).parameters, (cls, ours)
        if source.startswith("`") and "." in source:
            module_name, _, name = source.strip("`").rpartition(".")
            if importlib.util.find_spec(module_name.split(".")[0]) is None:
                continue
            their_cls = getattr(importlib.import_module(module_name), name)
            assert theirs.strip("`") in inspect.signature(their_cls).parameters, (source, theirs)
            checked_sources += 1
    assert checked_sources >= 6  # torch.optim rows at least


def load_lab_summary():
    return load_script(DOCS / "gen" / "lab_summary.py", "lab_summary")


def test_which_optimizer_page_names_every_optimizer_and_problem_of_the_committed_lab_data():
    gen = load_lab_summary()
    data = gen.load()
    assert data["optimizers"] and data["problems"]
    page = (DOCS / "which-optimizer.md").read_text()
    assert page.count(gen.MARKER) == 1
    text = gen.on_page_markdown(page, page=None)
    assert gen.MARKER not in text and "lab.md#protocol" in text
    for name in data["optimizers"]:
        assert name in gw.available() or "+" in name, name
        assert f"| `{name}` |" in text, name  # its row in the overall table
    for problem in data["problems"]:
        assert f"### {problem['name']}" in text
        ranked = [row["optimizer"] for row in problem["ranking"]]
        assert sorted(ranked) == sorted(data["optimizers"])
        ranks = [row["rank"] for row in problem["ranking"]]
        assert ranks == sorted(ranks)  # best first
    assert "which-optimizer.md" in (ROOT / "mkdocs.yml").read_text()


@pytest.mark.slow
def test_lab_summary_reads_a_finished_study_and_refuses_an_empty_folder(tmp_path):
    pytest.importorskip("optuna")
    from gradwise.lab import Plan, run_lab, storage_url

    gen = load_lab_summary()
    with pytest.raises(FileNotFoundError, match="lab.db"):
        gen.summarize(tmp_path / "nothing")
    plan = Plan.make("quick", problems=["beale"], optimizers=["adamw", "sgd"], trials=1, seeds=2)
    run_lab(plan, storage_url(tmp_path), threads=1)
    data = gen.summarize(tmp_path)
    assert data["optimizers"] == ["adamw", "sgd"] and [p["name"] for p in data["problems"]] == ["beale"]
    rows = data["problems"][0]["ranking"]
    assert {r["optimizer"] for r in rows} == {"adamw", "sgd"} and all(r["misses"] in (0, 1, 2) for r in rows)
    adamw = next(r for r in rows if r["optimizer"] == "adamw")
    assert adamw["misses"] <= 1 and adamw["steps_to_target"] is not None  # the target is AdamW's: half its seeds
    assert {r["optimizer"] for r in data["overall"]} == {"adamw", "sgd"}
    assert gen.load_text(gen.dumps(data)) == data
    assert "### beale" in gen.render(data)
