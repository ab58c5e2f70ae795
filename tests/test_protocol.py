"""Parsing client messages: the errors a client gets for each kind of bad input."""

import json

import pytest

from fim_server.shared.protocol import CancelRequest, InfillRequest, ProtocolError, parse_client_message


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
