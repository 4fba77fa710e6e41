"""Phrasing families of the function-calling generator (the project's own templates).

A *family* is a few closely related phrasings of one request; train and test are split by family, so no
test phrasing (nor a near-duplicate of it) is seen in training. Placeholders in a phrasing decide which tool
arguments the request states: ``{city}`` → location (or time zone), ``{unit}`` → unit, ``{when}`` → days,
``{topic}`` → title, ``{query}`` → query, ``{limit}`` → limit, ``{value} {src} {dst}`` → a conversion,
``{expr}`` → expression. Each family belongs to a *group*; the split takes ~test_fraction of every group.
"""

from __future__ import annotations

# tool -> family id -> phrasings. The group of a single-call family is its tool.
SINGLE = {
    "get_current_weather": {
        "cw-whats": ["What's the weather like in {city}?", "what's the weather in {city} right now",
                     "What is the weather in {city} {unit}?"],
        "cw-howis": ["How is the weather in {city} at the moment?", "How's the weather in {city} today?",
                     "how's the weather over in {city} {unit}"],
        "cw-temp": ["What's the temperature in {city}?", "How warm is it in {city} right now?",
                    "Current temperature in {city} {unit}, please."],
        "cw-terse": ["weather {city}", "{city} weather now", "{city} current weather {unit}"],
        "cw-trip": ["I'm about to head out in {city}, do I need a jacket? What's it like outside?",
                    "I'm in {city} and thinking of going for a walk. What's the weather doing?"],
        "cw-check": ["Can you check the current weather in {city}?", "Could you look up the weather in {city} "
                     "for me {unit}?", "Please check the conditions in {city} right now."],
        "cw-de": ["Wie ist das Wetter gerade in {city}?", "Wie warm ist es jetzt in {city}?"],
        "cw-fr": ["Quel temps fait-il à {city} en ce moment ?", "Il fait combien à {city} maintenant ?"],
        "cw-es": ["¿Qué tiempo hace ahora en {city}?", "¿Cuál es la temperatura actual en {city}?"],
        "cw-no": ["Hvordan er været i {city} nå?", "Hva er temperaturen i {city} akkurat nå?"],
    },
    "get_weather_forecast": {
        "fc-forecast": ["What's the forecast for {city} {when}?", "Give me the weather forecast for {city} {when}.",
                        "forecast {city} {when} {unit}"],
        "fc-rain": ["Will it rain in {city} {when}?", "Is rain expected in {city} {when}?",
                    "Should I bring an umbrella in {city} {when}?"],
        "fc-plan": ["I'm travelling to {city}. What weather should I expect {when}?",
                    "Planning a trip to {city}; how will the weather be {when}?"],
        "fc-temps": ["How hot will it get in {city} {when}?", "What are the highs and lows in {city} {when} "
                     "{unit}?", "How cold will it be in {city} {when}?"],
        "fc-snow": ["Any snow coming in {city} {when}?", "Is it going to snow in {city} {when}?"],
        "fc-plain": ["What's the weather forecast for {city}?", "Can I get the forecast for {city}?",
                     "Show me the upcoming weather in {city} {unit}."],
        "fc-de": ["Wie wird das Wetter in {city} {when_de}?", "Gibt es eine Wettervorhersage für {city}?"],
        "fc-fr": ["Quelle est la météo prévue à {city} {when_fr} ?", "Va-t-il pleuvoir à {city} {when_fr} ?"],
        "fc-es": ["¿Cómo estará el tiempo en {city} {when_es}?", "¿Va a llover en {city} {when_es}?"],
    },
    "search_wikipedia": {
        "sw-search": ["Search Wikipedia for {query}.", "search wikipedia: {query}",
                      "Can you search Wikipedia for {query}?"],
        "sw-find": ["Find Wikipedia articles about {query}.", "Look for articles on Wikipedia about {query}.",
                    "Find me the top {limit} Wikipedia results for {query}."],
        "sw-which": ["Which Wikipedia articles cover {query}?", "What does Wikipedia have on {query}? "
                     "Search for it."],
        "sw-limit": ["Give me {limit} Wikipedia search results for {query}.",
                     "Search Wikipedia for {query} and show {limit} results."],
        "sw-lookup": ["Look up {query} on Wikipedia.", "Could you run a Wikipedia search on {query}?"],
    },
    "get_wikipedia_summary": {
        "ws-summary": ["Summarise the Wikipedia article on {topic}.", "Give me the Wikipedia summary of {topic}.",
                       "What's the Wikipedia summary for {topic}?"],
        "ws-intro": ["Get me the intro of the Wikipedia page \"{topic}\".", "Read me the introduction of the "
                     "Wikipedia article {topic}."],
        "ws-tell": ["Tell me about {topic}, using the Wikipedia article.", "According to Wikipedia, who or what "
                    "is {topic}? Fetch the summary."],
        "ws-article": ["Open the Wikipedia article titled {topic} and summarise it.", "Pull up the Wikipedia "
                       "entry for {topic}."],
        "ws-short": ["wikipedia summary: {topic}", "{topic} wikipedia intro"],
    },
    "get_local_time": {
        "lt-what": ["What time is it in {city}?", "what's the time in {city} right now",
                    "What's the current time in {city}?"],
        "lt-call": ["Is it a good time to call someone in {city}? What's the local time there?",
                    "I need to phone a friend in {city}. What time is it there?"],
        "lt-date": ["What's the date and time in {city} now?", "What day is it in {city} at the moment?"],
        "lt-short": ["time in {city}", "{city} local time"],
    },
    "convert_units": {
        "cu-convert": ["Convert {value} {src} to {dst}.", "convert {value} {src} into {dst}",
                       "Please convert {value} {src} to {dst}."],
        "cu-howmany": ["How many {dst} is {value} {src}?", "How many {dst} are there in {value} {src}?"],
        "cu-whatis": ["What is {value} {src} in {dst}?", "{value} {src} in {dst}?"],
        "cu-recipe": ["My recipe says {value} {src}; how much is that in {dst}?",
                      "The sign says {value} {src}. What's that in {dst}?"],
    },
    "calculate": {
        "ca-what": ["What is {expr}? Please calculate it exactly.", "Calculate {expr}.",
                    "Compute {expr} for me."],
        "ca-eval": ["Evaluate the expression {expr}.", "Can you work out {expr} exactly?"],
        "ca-short": ["{expr} = ?", "calc {expr}"],
    },
}

# Clarification: a required argument is missing or ambiguous. family -> (group, tools offered, phrasings,
# answers). {amb} is an ambiguous place name, {options} its readings; {value}/{dst} a conversion lacking a unit.
CLARIFY = {
    "cl-noplace-now": ("clarify-weather", "weather", ["What's the weather like right now?", "How cold is it "
                       "outside?", "Is it sunny at the moment?"],
                       ["Which city or place would you like the current weather for?",
                        "Sure! Where are you, or which place should I check?"]),
    "cl-noplace-later": ("clarify-weather", "weather", ["Will it rain tomorrow?", "What's the forecast for the "
                         "weekend?", "Do I need an umbrella this week?"],
                         ["Which city or place should I get the forecast for?",
                          "Happy to check. Which location do you mean?"]),
    "cl-ambiguous": ("clarify-weather", "weather", ["What's the weather in {amb}?", "How's the weather in "
                     "{amb} today?", "Forecast for {amb} please"],
                     ["There are several places called {amb}. Which one do you mean: {options}?",
                      "Do you mean {options}? Several places are called {amb}."]),
    "cl-notime": ("clarify-other", "get_local_time", ["What time is it there?", "What's the local time?"],
                  ["Which city or time zone do you mean?", "Sure. For which city or time zone?"]),
    "cl-nounit": ("clarify-other", "convert_units", ["Convert {value} to {dst}.", "How much is {value} in "
                  "{dst}?"], ["What unit is {value} in? For example {examples}?",
                              "Could you tell me the unit of {value} ({examples})?"]),
    "cl-notopic": ("clarify-other", "research", ["Can you look something up on Wikipedia for me?",
                   "Search Wikipedia, please.", "I want a Wikipedia summary."],
                   ["Of course! What would you like me to look up?", "Sure. Which topic or article?"]),
}

# No tool needed although tools are offered. family -> (group, kind, key, tools that must NOT be offered).
# kind: fact (FACTS[key] pairs through the phrasings below), qa (FACTS[key] (question, answer) pairs, split
# in halves a/b), chitchat (CHITCHAT[key]), task (TASKS[key]), math (a phrasing computed here).
NO_TOOL = {
    "nt-capital": ("knowledge", "fact", "capital", ["search_wikipedia", "get_wikipedia_summary"]),
    "nt-author": ("knowledge", "fact", "author", ["search_wikipedia", "get_wikipedia_summary"]),
    "nt-symbol": ("knowledge", "fact", "symbol", ["search_wikipedia", "get_wikipedia_summary"]),
    "nt-misc-a": ("knowledge", "qa", "misc", ["search_wikipedia", "get_wikipedia_summary"]),
    "nt-misc-b": ("knowledge", "qa", "misc", ["search_wikipedia", "get_wikipedia_summary"]),
    "nt-concept-a": ("concept", "qa", "concept", ["search_wikipedia", "get_wikipedia_summary"]),
    "nt-concept-b": ("concept", "qa", "concept", ["search_wikipedia", "get_wikipedia_summary"]),
    **{f"nt-chat-{k}": ("chitchat", "chitchat", k, []) for k in ("greet", "howareyou", "thanks", "identity",
                                                                  "joke")},
    **{f"nt-task-{k}": ("task", "task", k, []) for k in ("poem", "translate", "recipe", "advice", "writing")},
    **{f"nt-math-{k}": ("math", "math", k, ["calculate"]) for k in ("add", "sub", "mult", "percent", "word")},
}
FACT_PHRASINGS = {
    "capital": (["What is the capital of {0}?", "Which city is the capital of {0}?", "capital of {0}?"],
                "The capital of {0} is {1}."),
    "author": (["Who wrote {0}?", "Who is the author of {0}?", "{0} was written by whom?"],
               "{0} was written by {1}."),
    "symbol": (["What is the chemical symbol for {0}?", "What's the element symbol of {0}?"],
               "The chemical symbol for {0} is {1}."),
}
MATH_PHRASINGS = {
    "add": (["What is {a} plus {b}?", "what's {a} + {b}"], "{a} + {b} = {r}."),
    "sub": (["What is {a} minus {b}?", "{a} - {b} = ?"], "{a} − {b} = {r}."),
    "mult": (["What's {a} times {b}?", "How much is {a} multiplied by {b}?"], "{a} × {b} = {r}."),
    "percent": (["What is 10% of {a}?", "How much is ten percent of {a}?"], "10% of {a} is {r}."),
    "word": (["If I have {a} apples and give away {b}, how many are left?"],
             "You would have {r} apples left."),
}

# Follow-ups after a first tool exchange (multi_turn). family -> (tools the first turn used, kind, phrasings).
FOLLOW_UPS = {
    "fu-tomorrow": (["get_current_weather"], "tomorrow",
                    ["And tomorrow?", "what about tomorrow?", "How about tomorrow?"]),
    "fu-week": (["get_current_weather"], "week",
                ["And for the whole week?", "What about the rest of the week?"]),
    "fu-othercity": (["get_current_weather", "get_weather_forecast"], "othercity",
                     ["What about {city}?", "And in {city}?", "how about {city}"]),
    "fu-unit": (["get_current_weather", "get_weather_forecast"], "unit",
                ["Can you give me that in Fahrenheit?", "In Fahrenheit, please.", "What's that in °F?"]),
    "fu-time": (["get_local_time"], "othercity", ["And in {city}?", "What about {city}?"]),
    "fu-convert": (["convert_units"], "otherunit", ["And in {dst}?", "What about in {dst}?"]),
    "fu-wiki": (["get_wikipedia_summary"], "othertopic", ["Now tell me about {topic}.", "And {topic}?"]),
    "fu-thanks": (["get_current_weather", "get_weather_forecast", "get_local_time", "convert_units",
                   "get_wikipedia_summary", "search_wikipedia", "calculate"], "thanks",
                  ["Thanks!", "Great, thank you.", "perfect, thanks a lot"]),
}

# Grounded final answers after a tool result, by tool (not split: they are targets, not prompts).
ANSWERS = {
    "get_current_weather": [
        "It's currently {temperature} in {location}; conditions: {conditions}. It feels like {feels_like}, "
        "humidity is {humidity} and the wind is {wind}.",
        "Right now in {location}: {conditions}, {temperature} (feels like {feels_like}), wind {wind}.",
    ],
    "get_weather_forecast": ["Here's the forecast for {location}:\n{day_lines}",
                             "The forecast for {location}:\n{day_lines}"],
    "search_wikipedia": ["I found these Wikipedia articles: {titles}. The best match is {title}: {snippet}",
                         "Top Wikipedia results: {titles}. {title}: {snippet}"],
    "get_wikipedia_summary": ["According to Wikipedia: {summary}", "Here's what Wikipedia says: {summary}"],
    "get_local_time": ["It's {clock} on {weekday} in {city} ({timezone}).",
                       "The local time in {city} is {clock} ({weekday})."],
    "convert_units": ["{value} {src} is {result} {dst}.", "That's {result} {dst}."],
    "calculate": ["{expression} = {result}.", "The result is {result}."],
    "error": ["Sorry, I couldn't get that: {error}", "Unfortunately the tool reported a problem: {error}"],
}
THANKS_ANSWERS = ["You're welcome!", "Glad I could help. Anything else?", "Any time!"]
