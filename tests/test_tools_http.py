"""The weather and Wikipedia tools against local servers in Open-Meteo's and MediaWiki's response shapes:
success, unknown place, empty search, disambiguation, missing article, HTTP 500, a hang past the timeout,
retry and cache."""

import time

import pytest

from llamatune.tools import http
from llamatune.tools.fakes import FakeServices
from llamatune.tools.http import ToolError
from llamatune.tools.weather import get_current_weather, get_weather_forecast
from llamatune.tools.wikipedia import get_wikipedia_summary, search_wikipedia


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(http, "DEFAULT_TIMEOUT", 0.4)
    monkeypatch.setattr(http, "RETRY_DELAY", 0.05)
    http.clear_cache()
    with FakeServices(hang_seconds=2.0) as f:
        yield f
    http.clear_cache()


def test_current_weather(fake):
    r = get_current_weather("Oslo")
    assert r["location"] == "Oslo, Oslo, Norway"
    assert r["temperature"] == "4.2°C" and r["conditions"] == "overcast" and r["humidity"] == "81%"
    geo = [q for e, _, q in fake.requests if e == "geocoding"][0]
    fc = [q for e, _, q in fake.requests if e == "forecast"][0]
    assert geo["name"] == "Oslo" and fc["latitude"] == "59.91273" and "weather_code" in fc["current"]


def test_fahrenheit_and_country_hint(fake):
    r = get_current_weather("Paris, Texas", unit="fahrenheit")
    assert r["location"] == "Paris, Texas, United States" and r["temperature"].endswith("°F")
    assert get_current_weather("Paris")["location"].endswith("France")  # first match without a hint


def test_forecast(fake):
    r = get_weather_forecast("Tokyo", days=3)
    assert r["location"] == "Tokyo, Tokyo, Japan" and len(r["days"]) == 3
    assert r["days"][1]["conditions"] == "light rain" and r["days"][0]["min"] == "-1.0°C"
    with pytest.raises(ToolError, match="between 1 and 16"):
        get_weather_forecast("Tokyo", days=30)


def test_unknown_place(fake):
    with pytest.raises(ToolError, match="could not find a place called 'Atlantis'"):
        get_current_weather("Atlantis")
    assert fake.count("forecast") == 0


def test_wikipedia_search_and_summary(fake):
    r = search_wikipedia("largest moon of Saturn")
    assert r["results"][0]["title"] == "Titan (moon)" and "<span" not in r["results"][0]["snippet"]
    s = get_wikipedia_summary("Ada Lovelace")
    assert s["title"] == "Ada_Lovelace" and "Analytical Engine" in s["summary"]
    assert s["url"] == "https://en.wikipedia.org/wiki/Ada_Lovelace"
    assert fake.requests[-1][1].endswith("/page/summary/Ada_Lovelace")


def test_empty_search(fake):
    with pytest.raises(ToolError, match="no article matching 'zzqx'"):
        search_wikipedia("zzqx")


def test_missing_article_is_not_found_not_http_error(fake):
    with pytest.raises(ToolError, match="no article titled 'No Such Page'"):
        get_wikipedia_summary("No Such Page")


def test_disambiguation(fake):
    with pytest.raises(ToolError, match="'Mercury' is ambiguous.*more specific"):
        get_wikipedia_summary("Mercury")


def test_http_500_is_retried_once_then_explained(fake):
    fake.failures["forecast"] = 500
    with pytest.raises(ToolError, match=r"weather service is unavailable right now \(HTTP 500\)"):
        get_current_weather("Oslo")
    assert fake.count("forecast") == 2  # one retry
    fake.failures["search"] = 503
    with pytest.raises(ToolError, match="Wikipedia search is unavailable"):
        search_wikipedia("Ada")


def test_hang_past_timeout(fake):
    fake.failures["geocoding"] = "hang"
    t = time.perf_counter()
    with pytest.raises(ToolError, match=r"geocoding service did not answer within 0.4 s"):
        get_current_weather("Oslo")
    dt = time.perf_counter() - t
    assert 0.8 <= dt < 1.8  # two attempts of 0.4 s, not the 2 s hang
    assert fake.count("geocoding") == 2


def test_unreachable_service(monkeypatch, fake):
    monkeypatch.setenv("WIKIPEDIA_API_URL", "http://127.0.0.1:9/w/api.php")  # discard port: refused
    with pytest.raises(ToolError, match="Wikipedia search could not be reached"):
        search_wikipedia("Ada")


def test_cache_serves_repeat_within_ttl(fake, monkeypatch):
    get_current_weather("Oslo")
    get_current_weather("Oslo")
    assert fake.count("geocoding") == 1 and fake.count("forecast") == 1
    monkeypatch.setattr(http, "CACHE_TTL", 0.0)
    http.clear_cache()
    get_current_weather("Oslo")
    assert fake.count("geocoding") == 2


@pytest.fixture
def odd_server():
    """A local server whose /trickle sends a JSON body a byte at a time (each byte well within the socket
    timeout) and whose /huge sends 3 MiB."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            body = b'{"x": "' + (b"a" * (3 * 2**20) if self.path.startswith("/huge") else b"abcdefghijklmnop") + b'"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path.startswith("/trickle"):
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_a_trickling_server_times_out_on_the_whole_answer(odd_server, monkeypatch):
    monkeypatch.setattr(http, "RETRY_DELAY", 0.0)
    http.clear_cache()
    with pytest.raises(ToolError, match=r"test service did not answer within 0.5 s"):
        http.get_json(f"{odd_server}/trickle", {}, service="test service", timeout=0.5, retries=0)


def test_an_oversized_answer_is_refused(odd_server):
    http.clear_cache()
    with pytest.raises(ToolError, match=r"test service sent more than 2 MiB"):
        http.get_json(f"{odd_server}/huge", {}, service="test service", timeout=5, retries=0)


def test_the_cache_keeps_at_most_cache_max_answers(fake, monkeypatch):
    import os

    monkeypatch.setattr(http, "CACHE_MAX", 2)
    url = os.environ["OPEN_METEO_GEOCODING_URL"]
    ask = lambda place: http.get_json(url, {"name": place}, service="geocoding service")  # noqa: E731
    for place in ("Oslo", "Paris", "Oslo", "Tokyo"):  # Oslo is a hit the second time, so Paris is the oldest
        ask(place)
    assert len(http._cache) == 2 and fake.count("geocoding") == 3
    ask("Oslo")  # still cached
    assert fake.count("geocoding") == 3
    ask("Paris")  # evicted when Tokyo came
    assert fake.count("geocoding") == 4
