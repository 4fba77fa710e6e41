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
