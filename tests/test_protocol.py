"""Parsing client messages: the errors a client gets for each kind of bad input."""

import json

import pytest

from fim_server.shared.protocol import (
    MAX_EXTRA,
    CancelRequest,
    ExtraChunk,
    InfillRequest,
    ProtocolError,
    parse_client_message,
)


def parse(obj):
    return parse_client_message(json.dumps(obj))


def code_of(raw):
    with pytest.raises(ProtocolError) as e:
        parse_client_message(raw if isinstance(raw, (str, bytes)) else json.dumps(raw))
    return e.value.code, e.value.id


def test_minimal_and_full_infill():
    r = parse({"type": "infill", "id": "r1", "prefix": "a", "suffix": "b"})
    assert r == InfillRequest(id="r1", prefix="a", suffix="b")
    r = parse({"type": "infill", "id": "r2", "prefix": "", "suffix": "", "language": "python", "max_tokens": 8,
               "stream": True, "steps": 3, "threshold": 0.5, "temperature": 0.7})
    assert (r.max_tokens, r.stream, r.steps, r.threshold, r.temperature) == (8, True, 3, 0.5, 0.7)


def test_cancel():
    assert parse({"type": "cancel", "id": "r1"}) == CancelRequest("r1")


def test_bad_inputs_get_precise_codes_and_keep_the_id():
    assert code_of("{not json") == ("bad_json", None)
    assert code_of(b"\xff\xfe") == ("bad_utf8", None)
    assert code_of([1, 2]) == ("bad_json", None)
    assert code_of({"type": "fly", "id": "a"}) == ("unknown_type", "a")
    assert code_of({"type": "infill", "id": "a"}) == ("missing_field", "a")
    assert code_of({"type": "infill", "prefix": "x"}) == ("missing_field", None)
    assert code_of({"type": "infill", "id": "a", "prefix": 3}) == ("bad_field", "a")
    assert code_of({"type": "infill", "id": "a", "prefix": "", "max_tokens": True}) == ("bad_field", "a")
    assert code_of({"type": "infill", "id": "a", "prefix": "", "max_tokens": 10**6}) == ("bad_field", "a")
    assert code_of({"type": "infill", "id": "a", "prefix": "", "max_tokens": 1.5}) == ("bad_field", "a")
    assert code_of({"type": "infill", "id": "a", "prefix": "", "threshold": 0}) == ("bad_field", "a")
    assert code_of({"type": "infill", "id": "a", "prefix": "", "stream": "yes"}) == ("bad_field", "a")
    assert code_of({"type": "infill", "id": "", "prefix": ""}) == ("bad_field", None)
    assert code_of({"type": "infill", "id": 7, "prefix": ""}) == ("bad_field", None)


# ---- hostile input: every one is a clear error with its code, never a crash or a close --------------------------
@pytest.mark.parametrize("raw, code", [
    ('{"type": "infill", "id": "a", "prefix": "x", "temperature": 1' + "0" * 400 + "}", "bad_field"),
    ('{"type": "infill", "id": "a", "prefix": "x", "max_tokens": ' + "9" * 5000 + "}", "bad_json"),
    ('{"type": "infill", "id": "a", "prefix": "x", "temperature": NaN}', "bad_json"),
    ('{"type": "infill", "id": "a", "prefix": "x", "threshold": Infinity}', "bad_json"),
    ('{"type": "infill", "id": "a", "prefix": "x\\ud800y"}', "bad_field"),
    ('{"type": "edit", "id": "a", "text": "ab\\udfff", "regions": [{"start": 0, "end": 1}]}', "bad_field"),
])
def test_numbers_past_range_and_invalid_unicode_are_refused_with_a_code(raw, code):
    with pytest.raises(ProtocolError) as e:
        parse_client_message(raw)
    assert e.value.code == code


def test_the_size_cap_counts_utf8_bytes_not_characters():
    from fim_server.shared.protocol import size_over

    assert size_over("é" * 600, 1000) == 1200  # 600 characters, 1200 bytes: over a 1000-byte cap
    assert size_over("e" * 600, 1000) is None
    assert size_over(b"x" * 1001, 1000) == 1001


def test_the_client_codec_round_trips_every_request():
    import json

    from fim_server.shared.protocol import EditRegion, EditRequest, request_message

    reqs = [InfillRequest("a", "x = ", "\n", "python", 32, True, 4, 0.7, 0.5),
            InfillRequest("b", "y", ""),
            EditRequest("c", "a = \nb = \n", (EditRegion(4, 4), EditRegion(5, 9, "revise", 16)), "python",
                        steps=3, threshold=0.9, temperature=0.2, revise_threshold=0.4),
            InfillRequest("e", "z", "", extra=(ExtraChunk("lib/geo.py", "def area(w, h):\n"), ExtraChunk("", "x"))),
            EditRequest("f", "a", (EditRegion(1, 1),), extra=(ExtraChunk("b.py", "b = 2\n"),)),
            CancelRequest("d")]
    for r in reqs:
        assert parse_client_message(json.dumps(request_message(r))) == r


def test_candidates_is_a_small_positive_integer():
    assert parse({"type": "infill", "id": "a", "prefix": "x", "candidates": 4}).candidates == 4
    assert parse({"type": "infill", "id": "a", "prefix": "x"}).candidates == 1
    for bad in (0, 9, 2.5, True):
        assert code_of({"type": "infill", "id": "a", "prefix": "x", "candidates": bad}) == ("bad_field", "a")


def test_extra_is_a_short_list_of_path_and_text():
    ok = parse({"type": "infill", "id": "a", "prefix": "x", "extra": [{"path": "p.py", "text": "t"}, {"text": "u"}]})
    assert ok.extra == (ExtraChunk("p.py", "t"), ExtraChunk("", "u"))
    for bad, code in (("chunk", "bad_field"), ([1], "bad_field"), ([{"path": "p"}], "missing_field"),
                      ([{"text": 3}], "bad_field"), ([{"text": "t", "path": 1}], "bad_field"),
                      ([{"text": "t"}] * (MAX_EXTRA + 1), "bad_field")):
        assert code_of({"type": "infill", "id": "a", "prefix": "x", "extra": bad}) == (code, "a"), bad
