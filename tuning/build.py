"""`policyrag tune build-data`: seeds -> retrieved-context pairs -> dataset rules -> JSONL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from core.settings import Settings
from retrieval.retriever import Retriever
from tuning.dataset import DatasetReport, apply_rules, write_dataset
from tuning.pairs import PairBuilder
from tuning.seeds import check_gold_overlap, load_gold_questions, load_seeds


def build_training_data(
    settings: Settings,
    *,
    retriever: Retriever | None = None,
    scrubber=None,
    seeds_file: Path | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> tuple[Path, DatasetReport]:
    """Build and write the dataset; returns its folder and report. Raises GoldOverlapError
    before retrieving anything if a seed is a near-duplicate of a gold eval question."""
    seeds = load_seeds(seeds_file or settings.tuning_seeds_file)
    retriever = retriever or Retriever.from_settings(settings)
    embed = retriever.embedder.embed
    on_stage("checking seeds against the gold eval set")
    check_gold_overlap(seeds, load_gold_questions(settings.gold_set_file), embed, settings.tuning_gold_overlap_threshold)

    on_stage(f"retrieving contexts for {len(seeds)} seeds")
    builder = PairBuilder(retriever, k=settings.answer_passages, audience=settings.tuning_audience_groups,
                          regions=settings.tuning_audience_regions)
    candidates, rejections = builder.build(seeds)

    on_stage(f"applying the dataset rules to {len(candidates)} candidate pairs")
    if scrubber is None:
        from ingest.pii import PiiScrubber

        scrubber = PiiScrubber.from_settings(settings)
    pairs, rule_rejections, pii = apply_rules(
        candidates,
        scrubber=scrubber,
        embed=embed,
        dedupe_threshold=settings.tuning_dedupe_threshold,
        heldout_fraction=settings.tuning_heldout_fraction,
    )
    rejections += rule_rejections
    report = DatasetReport(
        seeds=len(seeds),
        candidates=len(candidates),
        pairs=len(pairs),
        train=sum(p.split == "train" for p in pairs),
        heldout=sum(p.split == "heldout" for p in pairs),
        rejected=dict(Counter(r.rule for r in rejections)),
        pii_replacements=pii,
        by_variant=dict(Counter(p.variant for p in pairs)),
        by_target=dict(Counter(p.target_kind for p in pairs)),
        rejections=[r.__dict__ for r in rejections],
    )
    folder = write_dataset(pairs, report, settings.datasets_dir)
    return folder, report

