import pytest

from ingest.pii import PiiScrubber, looks_like_person_name

SAMPLE = (
    "My name is Jane Whitfield, reach me at jane.whitfield@gmail.com or +44 20 7946 0958. "
    "NI number JG 10 37 92 D, IBAN GB82 WEST 1234 5698 7654 32, card 4111 1111 1111 1111, "
    "SSN 536-22-8754."
)


def test_personal_data_is_replaced_and_counted(scrubber):
    text, report = scrubber.scrub(SAMPLE)
    for secret in ("Jane Whitfield", "jane.whitfield@gmail.com", "7946 0958", "JG 10 37 92 D",
                   "GB82 WEST", "4111 1111", "536-22-8754"):
        assert secret not in text, secret
    assert report.counts["PERSON"] == 1 and report.counts["EMAIL_ADDRESS"] == 1
    for entity in ("PHONE_NUMBER", "UK_NINO", "IBAN_CODE", "CREDIT_CARD", "US_SSN"):
        assert report.counts.get(entity) == 1, (entity, report.counts)
    assert "<EMAIL_ADDRESS>" in text and "<PERSON>" in text


def test_policy_vocabulary_is_not_mistaken_for_names(scrubber):
    text = (
        "## 4.3 Suspicious messages\n\nSee the Gifts and Hospitality Policy. The LTIP grant "
        "vests over three years. Screen lock applies after 5 minutes. Ask the MLRO."
    )
    scrubbed, report = scrubber.scrub(text)
    assert scrubbed == text and report.total == 0


def test_allow_list_keeps_functional_contacts(scrubber):
    allow = PiiScrubber(scrubber.spacy_model, allow_list=["+44 20 7946 0000"])
    text, report = allow.scrub("Call the ethics line on +44 20 7946 0000.")
    assert "+44 20 7946 0000" in text and report.total == 0


@pytest.mark.parametrize("span,expected", [
    ("Jane Whitfield", True), ("Daniel Okafor", True), ("Screen lock", False),
    ("Gifts and Hospitality", False), ("LTIP", False), ("Breaches", False),
])
def test_person_name_shape(span, expected):
    assert looks_like_person_name(span) is expected


def test_a_name_never_spans_lines(scrubber):
    text = "## 1. Carry\n\nCarry over 8 days."
    assert scrubber.scrub(text)[0] == text
