"""The shared output text: stop strings, incomplete UTF-8, EOS ids and the context length (pure)."""

from __future__ import annotations

import pytest
from baton_worker.text import StopText, TextAssembler, context_limit, eos_token_ids, sendable_end

# A toy byte-level vocabulary: id -> bytes (ids 200 and 201 are the two halves of "é").
VOCAB = {i: bytes([i]) for i in range(1, 127)}
VOCAB[200], VOCAB[201] = "é".encode()[:1], "é".encode()[1:]


def decode(ids: list[int]) -> str:
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


def ids_of(s: str) -> list[int]:
    return [ord(c) for c in s]


def run(chunks: list[list[int]], stop: tuple[str, ...] = ()) -> tuple[list[str], TextAssembler]:
    t = TextAssembler(decode, stop)
    out = [t.add(c) for c in chunks]
    out.append(t.flush())
    return out, t


def test_plain_text_streams_every_token() -> None:
    out, t = run([ids_of("ab"), ids_of("c")])
    assert out == ["ab", "c", ""] and t.text == "abc" and not t.stopped


def test_incomplete_utf8_is_held_back() -> None:
    out, t = run([ids_of("x") + [200], [201], ids_of("y")])
    assert out == ["x", "é", "y", ""] and t.text == "xéy"


@pytest.mark.parametrize(
    ("chunks", "stop", "text", "stopped"),
    [
        (["hello", " wor", "ld END more"], ("END",), "hello world ", True),
        (["aE", "N", "D"], ("END",), "a", True),
        (["aE", "N", "x"], ("END",), "aENx", False),  # a partial stop is released when it fails to complete
        (["abc"], ("b", "c"), "a", True),  # the earliest stop wins
        (["a\n\nb"], ("\n\n",), "a", True),
        (["ab"], ("abc",), "ab", False),  # held back, then flushed at the end
    ],
)
def test_stop_strings(chunks: list[str], stop: tuple[str, ...], text: str, stopped: bool) -> None:
    out, t = run([ids_of(c) for c in chunks], stop)
    assert "".join(out) == text == t.text
    assert t.stopped is stopped
    for piece in out:
        for s in stop:
            assert s not in piece


def test_streamed_equals_all_at_once_for_any_split() -> None:
    s = "the quick END brown"
    whole, _ = run([ids_of(s)], ("END",))
    for cut in range(1, len(s)):
        parts, _ = run([ids_of(s[:cut]), ids_of(s[cut:])], ("END",))
        assert "".join(parts) == "".join(whole) == "the quick "


def test_nothing_after_stop() -> None:
    t = TextAssembler(decode, ("X",))
    assert t.add(ids_of("aXb")) == "a"
    assert t.add(ids_of("more")) == "" and t.text == "a"


def test_the_builtin_tokenizers_split_characters_never_reach_a_stream() -> None:
    from baton_worker.text import load_tokenizer

    tok = load_tokenizer("builtin://tiny")
    text = "héllo 😀 日本"
    ids = tok.encode(text)
    # The tokenizer is byte-level: some tokens are fragments of one character.
    assert any(tok.decode([i]) == "\ufffd" for i in ids)
    t = TextAssembler(tok.decode)
    deltas = [t.add([i]) for i in ids] + [t.flush()]
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == tok.decode(ids) == t.text


@pytest.mark.parametrize(
    ("text", "stops", "end"),
    [
        ("abc", (), 3),
        ("ab\ufffd\ufffd", (), 2),  # an incomplete character waits for its next byte
        ("hello EN", ("END",), 6),  # the possible start of a stop string waits
        ("hello EX", ("END",), 8),  # text that cannot start a stop string goes at once
        ("a\ufffd", ("a\u00e9",), 0),  # a stop may go on with the character still incomplete
    ],
)
def test_sendable_end(text: str, stops: tuple[str, ...], end: int) -> None:
    assert sendable_end(text, stops) == end


def test_stop_text_appended_pieces_equal_whole_updates() -> None:
    pieces = ["he", "llo E", "N", "x E", "ND tail"]
    appended, whole = StopText(("END",)), StopText(("END",))
    a = [appended.append(p) for p in pieces] + [appended.flush()]
    w = [whole.update("".join(pieces[: i + 1])) for i in range(len(pieces))] + [whole.flush()]
    assert a == w == ["he", "llo ", "", "ENx ", "", ""]
    assert appended.text == whole.text == "hello ENx " and appended.stopped and whole.stopped


@pytest.mark.parametrize(
    ("config", "limit"),
    [
        ({"model_type": "llama", "max_position_embeddings": 2048}, 2048),
        ({"model_type": "mistral", "max_position_embeddings": 32768, "sliding_window": 4096}, 4096),
        ({"model_type": "mistral", "max_position_embeddings": 32768, "sliding_window": None}, 32768),
        ({"model_type": "qwen2", "max_position_embeddings": 32768, "sliding_window": 4096}, 32768),
        ({}, 0),  # unknown
    ],
)
def test_context_limit(config: dict, limit: int) -> None:
    assert context_limit(config) == limit


def test_eos_token_ids_merge_config_and_tokenizer() -> None:
    assert eos_token_ids([7, 2], 2) == (2, 7)
    assert eos_token_ids(None, 5) == (5,)
    assert eos_token_ids(None, None) == ()
