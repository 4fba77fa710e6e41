"""Weather tools on Open-Meteo (no API key): geocoding, current conditions, daily forecast.

Base URLs come from the environment so tests point them at local servers:
``OPEN_METEO_GEOCODING_URL`` (default https://geocoding-api.open-meteo.com/v1/search) and
``OPEN_METEO_FORECAST_URL`` (default https://api.open-meteo.com/v1/forecast).
"""

from __future__ import annotations

import os
from typing import Literal

from llamatune.tools.http import ToolError, get_json
from llamatune.tools.schema import tool

# WMO weather interpretation codes (Open-Meteo docs).
WMO = {
    0: "clear sky", 1: "mainly clear", 2: "partly cloudy", 3: "overcast", 45: "fog", 48: "rime fog",
    51: "light drizzle", 53: "drizzle", 55: "dense drizzle", 56: "freezing drizzle", 57: "freezing drizzle",
    61: "light rain", 63: "rain", 65: "heavy rain", 66: "freezing rain", 67: "freezing rain",
    71: "light snow", 73: "snow", 75: "heavy snow", 77: "snow grains", 80: "rain showers",
    81: "rain showers", 82: "violent rain showers", 85: "snow showers", 86: "heavy snow showers",
    95: "thunderstorm", 96: "thunderstorm with hail", 99: "thunderstorm with hail",
}


def _geo_url() -> str:
    return os.environ.get("OPEN_METEO_GEOCODING_URL", "https://geocoding-api.open-meteo.com/v1/search")


def _forecast_url() -> str:
    return os.environ.get("OPEN_METEO_FORECAST_URL", "https://api.open-meteo.com/v1/forecast")


def geocode(location: str) -> dict:
    """The best Open-Meteo geocoding match for ``location`` (``name``, ``country``, ``latitude``…)."""
    name = location.split(",")[0].strip()
    if not name:
        raise ToolError("Please name a place.")
    data = get_json(_geo_url(), {"name": name, "count": 5, "language": "en", "format": "json"},
                    service="geocoding service")
    results = (data or {}).get("results") or []
    if not results:
        raise ToolError(f"I could not find a place called {location!r}.")
    hint = location.split(",")[1].strip().lower() if "," in location else ""
    for r in results:  # "Paris, Texas" prefers the match whose country/region mentions the hint
        if hint and hint in f"{r.get('country', '')} {r.get('admin1', '')} {r.get('country_code', '')}".lower():
            return r
    return results[0]


def _place(g: dict) -> str:
    return ", ".join(x for x in (g.get("name"), g.get("admin1"), g.get("country")) if x)


@tool
def get_current_weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather (temperature, wind, conditions) for a city or place.

    Args:
        location: The city or place, optionally with its country, e.g. "Oslo" or "Paris, France".
        unit: Temperature unit, "celsius" or "fahrenheit".
    """
    g = geocode(location)
    params = {
        "latitude": g["latitude"], "longitude": g["longitude"], "timezone": "auto",
        "current": "temperature_2m,apparent_temperature,relative_humidity_2m,wind_speed_10m,weather_code",
        "temperature_unit": unit, "wind_speed_unit": "kmh",
    }
    data = get_json(_forecast_url(), params, service="weather service")
    cur = (data or {}).get("current")
    if not cur:
        raise ToolError(f"The weather service had no current conditions for {_place(g)}.")
    sym = "°F" if unit == "fahrenheit" else "°C"
    return {
        "location": _place(g),
        "time": cur.get("time"),
        "temperature": f"{cur.get('temperature_2m')}{sym}",
        "feels_like": f"{cur.get('apparent_temperature')}{sym}",
        "humidity": f"{cur.get('relative_humidity_2m')}%",
        "wind": f"{cur.get('wind_speed_10m')} km/h",
        "conditions": WMO.get(cur.get("weather_code"), "unknown"),
    }


@tool
def get_weather_forecast(location: str, days: int = 3, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the daily weather forecast (min/max temperature, precipitation, conditions) for the next days.

    Args:
        location: The city or place, optionally with its country, e.g. "Tokyo" or "Paris, Texas".
        days: Number of days to forecast, from 1 to 16 (1 = today, 2 = today and tomorrow).
        unit: Temperature unit, "celsius" or "fahrenheit".
    """
    if not 1 <= int(days) <= 16:
        raise ToolError("I can forecast between 1 and 16 days ahead.")
    g = geocode(location)
    params = {
        "latitude": g["latitude"], "longitude": g["longitude"], "timezone": "auto", "forecast_days": int(days),
        "daily": "temperature_2m_max,temperature_2m_min,precipitation_sum,weather_code",
        "temperature_unit": unit,
    }
    data = get_json(_forecast_url(), params, service="weather service")
    daily = (data or {}).get("daily") or {}
    dates = daily.get("time") or []
    if not dates:
        raise ToolError(f"The weather service had no forecast for {_place(g)}.")
    sym = "°F" if unit == "fahrenheit" else "°C"
    return {
        "location": _place(g),
        "days": [
            {
                "date": d,
                "min": f"{daily['temperature_2m_min'][i]}{sym}",
                "max": f"{daily['temperature_2m_max'][i]}{sym}",
                "precipitation": f"{daily['precipitation_sum'][i]} mm",
                "conditions": WMO.get(daily["weather_code"][i], "unknown"),
            }
            for i, d in enumerate(dates)
        ],
    }
