"""Parsing the unconstrained writer's reply (``llm-text``): a JSON list / object, or ``Q: ... A: ...``
lines (SmolLM2-135M rarely writes valid JSON); the count of unparsable parts is returned."""

from __future__ import annotations

import re

from ..structured import json_in_reply
from .synth_filters import normalize_answer

def _pairs_from_json(obj) -> list[tuple[str, str]] | None:
    if isinstance(obj, dict):
        for key in ("pairs", "questions", "qa", "items"):
            if isinstance(obj.get(key), list):
                return _pairs_from_json(obj[key])
        obj = [obj]
    if not isinstance(obj, list):
        return None
    out = []
    for item in obj:
        if not isinstance(item, dict):
            out.append(("", ""))  # counted as a malformed item
            continue
        low = {str(k).lower(): v for k, v in item.items()}
        q = low.get("question", low.get("q"))
        a = low.get("answer", low.get("a"))
        out.append((str(q) if isinstance(q, (str, int, float)) else "",
                    str(a) if isinstance(a, (str, int, float)) else ""))
    return out


_QLINE = re.compile(r"^\s*(?:[-*\d.)\s]*)?(?:q(?:uestion)?\s*\d*\s*[:.)-])\s*(?:question\s*:\s*)?(.*)$", re.I)
_ALINE = re.compile(r"^\s*(?:[-*\s]*)?(?:a(?:nswer)?\s*\d*\s*[:.)-])\s*(?:answer\s*:\s*)?(.*)$", re.I)


def _pairs_from_lines(reply: str) -> list[tuple[str, str]]:
    out, question = [], None
    for line in reply.splitlines():
        mq, ma = _QLINE.match(line), _ALINE.match(line)
        if mq and mq.group(1).strip():
            if question is not None:
                out.append((question, ""))  # a question without an answer
            question = mq.group(1).strip()
            # "Q: ... A: ..." on one line
            inline = re.split(r"\s+A(?:nswer)?\s*:\s*", question, maxsplit=1)
            if len(inline) == 2 and inline[1].strip():
                out.append((inline[0].strip(), inline[1].strip()))
                question = None
        elif ma and question is not None:
            out.append((question, ma.group(1).strip()))
            question = None
    if question is not None:
        out.append((question, ""))
    return out


def parse_pairs(reply: str) -> tuple[list[tuple[str, str]], int]:
    """``(pairs, malformed_items)`` from a generation: JSON list/object, else Q:/A: lines.

    A pair is kept only when both its question and answer are non-empty; items missing
    one of them are counted as malformed. An empty list means the reply is malformed.
    """
    reply = str(reply or "")
    items = None
    for kind in (list, dict):
        try:
            items = _pairs_from_json(json_in_reply(reply, kind))
        except ValueError:  # StructuredOutputError too: no such JSON in the reply
            items = None
        if items:
            break
    if not items:
        items = _pairs_from_lines(reply)
    good, bad = [], 0
    for q, a in items:
        q, a = " ".join(q.split()).strip(), " ".join(a.split()).strip().strip('"').strip()
        if q and a and normalize_answer(a):
            good.append((q if q.endswith("?") else q.rstrip(".") + "?", a.rstrip(".")))
        else:
            bad += 1
    return good, bad
