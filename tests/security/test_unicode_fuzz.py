"""Hostile text: no query text may crash the router or make ``model="auto"`` answer a 5xx.

Property-based (hypothesis) over arbitrary Unicode, control characters, case-folding traps
(``\u017folve``, a long s, once made the keyword classifier raise KeyError: IGNORECASE matched it as "solve",
the owner lookup did not) and very long texts; first on the classifiers themselves, then through
a live gateway's ``/route`` and ``/v1/chat/completions``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_sdk.experts import DEFAULT_EXPERTS, ExpertModel
from tests.security.conftest import Gateway

router = pytest.importorskip("forge_plugins.router")

TRAPS = [
    "\u017folve",
    "\u017fcript",
    "\u212a",
    "\u0130ntegral",
    "\ufb01le",
    "ß",
    "ǅ",
    "Σ",
    "\u0130",
    "\x00",
    "\ufeff",
    "\u202e",
]
KEYWORDS = [k for e in DEFAULT_EXPERTS for k in e.keywords]
texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=100),
    st.lists(st.sampled_from(TRAPS + KEYWORDS + [" ", "\n"]), max_size=40).map("".join),
    st.builds(lambda word, n: word * n, st.sampled_from(TRAPS + KEYWORDS), st.integers(1, 20_000)),
)
EXPERTS = [
    *DEFAULT_EXPERTS,
    ExpertModel(name="legal", endpoint="http://127.0.0.1:1/v1", keywords=["contract"]),
]


@pytest.fixture(scope="module")
def classifiers() -> list[Any]:
    return [
        router.KeywordClassifier(EXPERTS),
        router.NeuralClassifier(EXPERTS, encoder=False),
        router.HybridClassifier(EXPERTS, encoder=False),
    ]


def test_the_long_s_no_longer_crashes_the_keyword_classifier() -> None:
    decision = router.KeywordClassifier(EXPERTS).classify_with_confidence("\u017folve this equation")
    assert decision.expert == "math"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_classifiers_answer_every_text(classifiers: list[Any], text: str) -> None:
    names = {e.name for e in EXPERTS}
    for classifier in classifiers:
        decision = classifier.classify_with_confidence(text)
        assert decision.expert in names, (classifier.name, decision)
        assert 0.0 <= decision.confidence <= 1.0


def _fuzz_live(port: int, key: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:

        @settings(max_examples=40, deadline=None)
        @given(text=texts)
        def fuzz(text: str) -> None:
            if len(quote(text)) < 60_000:  # httpx refuses longer URLs itself (long texts go in bodies)
                route = http.post("/route", params={"query": text})
                assert route.status_code in (200, 400, 413, 414, 431), route.text
            body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 1}
            chat = http.post("/v1/chat/completions", json=body)
            assert chat.status_code in (200, 400, 413), chat.text
            raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
            again = http.post(
                "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
            )
            assert again.status_code < 500, again.text

        fuzz()


@pytest.mark.asyncio(loop_scope="session")
async def test_model_auto_and_route_never_answer_5xx(gw: Gateway) -> None:
    # The server runs on this event loop: drive hypothesis from a worker thread.
    await asyncio.to_thread(_fuzz_live, gw.port, gw.keys["user"])


@pytest.mark.asyncio(loop_scope="session")
async def test_invalid_utf8_bodies_are_400(gw: Gateway) -> None:
    for raw in (b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}', b"\xc3\x28"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
            f"authorization: Bearer {gw.keys['user']}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(raw)}\r\n\r\n"
        )
        writer.write(head.encode() + raw)
        status = int((await reader.read()).split(b" ", 2)[1])
        writer.close()
        assert status == 400
