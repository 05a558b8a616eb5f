"""Reading whose a payload is (session id, cwd) from bytes that may be cut off or malformed:
only the top-level members count, as far as the bytes go."""

from __future__ import annotations

import json

import pytest

from ccrl.agent.store.payload_ids import payload_ids

EVENT = {"session_id": "s-1", "transcript_path": "/t/s-1.jsonl", "cwd": "/work/a \"quoted\" \\ dir",
         "hook_event_name": "PostToolUse", "tool_input": {"cwd": "/elsewhere", "session_id": "not-this-one"},
         "tool_response": {"stdout": "\"cwd\": \"/fake\", \"session_id\": \"fake\""}}


def test_a_whole_event_and_its_parsed_form_agree():
    raw = json.dumps(EVENT).encode()
    assert payload_ids(raw) == payload_ids(EVENT) == ("s-1", "/work/a \"quoted\" \\ dir")


@pytest.mark.parametrize("cut", [30, 60, 90, 140, 200, 260])
def test_a_truncated_event_says_what_its_bytes_still_hold(cut):
    raw = json.dumps(EVENT).encode()[:cut]
    session, cwd = payload_ids(raw)
    assert session == ("s-1" if b'"s-1"' in raw else None)
    # Only the top-level cwd, once its closing quote arrived; never a nested or quoted one.
    assert cwd in (None, EVENT["cwd"])
    assert cwd == (EVENT["cwd"] if raw.find(b'dir"') > 0 else None)


def test_nested_and_quoted_keys_are_not_taken_for_top_level_ones():
    raw = json.dumps({"tool_input": {"cwd": "/nested", "session_id": "nested"},
                      "prompt": "\"session_id\": \"in-text\""}).encode()
    assert payload_ids(raw) == (None, None)


def test_transcript_lines_name_their_session_as_sessionId():
    line = json.dumps({"type": "user", "sessionId": "t-9", "cwd": "/w", "message": {"content": "x" * 50}})
    assert payload_ids(line.encode()[:-10]) == ("t-9", "/w")


@pytest.mark.parametrize("raw", [b"", b"garbage", b"[1, 2]", b'["session_id", "x"]', b"\xff\xfe\x00",
                                 b'{"session_id": 5, "cwd": null}', b'{"session_id": "unterminated'])
def test_unusable_bytes_say_nothing(raw):
    assert payload_ids(raw) == (None, None)


def test_bytes_that_are_not_utf8_elsewhere_still_give_the_ids():
    raw = b'{"session_id": "s-2", "prompt": "caf\xe9 \xff", "cwd": "/w/b"}'
    assert payload_ids(raw) == ("s-2", "/w/b")


def test_a_huge_value_before_the_ids_is_skipped_whole():
    raw = b'{"prompt": "' + b'\\"' * 200_000 + b'", "session_id": "s-3", "cwd": "/w/c"'
    assert payload_ids(raw) == ("s-3", "/w/c")
