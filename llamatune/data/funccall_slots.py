"""Slot values of the function-calling generator: places, Wikipedia topics, units, facts, canned answers.

All written by this project. Places come with the spellings a user may type (native names, no diacritics,
other scripts); the tool call always uses the English name, and the scorer accepts the other spellings.
"""

from __future__ import annotations

# (English name used in calls, country, IANA time zone, other spellings a user may type)
CITIES = [
    ("Oslo", "Norway", "Europe/Oslo", []),
    ("Bergen", "Norway", "Europe/Oslo", []),
    ("Tromsø", "Norway", "Europe/Oslo", ["Tromso"]),
    ("Munich", "Germany", "Europe/Berlin", ["München", "Muenchen"]),
    ("Cologne", "Germany", "Europe/Berlin", ["Köln", "Koeln"]),
    ("Berlin", "Germany", "Europe/Berlin", []),
    ("Vienna", "Austria", "Europe/Vienna", ["Wien"]),
    ("Zurich", "Switzerland", "Europe/Zurich", ["Zürich"]),
    ("Geneva", "Switzerland", "Europe/Zurich", ["Genève", "Genf"]),
    ("Lisbon", "Portugal", "Europe/Lisbon", ["Lisboa"]),
    ("Copenhagen", "Denmark", "Europe/Copenhagen", ["København"]),
    ("Warsaw", "Poland", "Europe/Warsaw", ["Warszawa"]),
    ("Krakow", "Poland", "Europe/Warsaw", ["Kraków", "Cracow"]),
    ("Prague", "Czechia", "Europe/Prague", ["Praha"]),
    ("Rome", "Italy", "Europe/Rome", ["Roma"]),
    ("Florence", "Italy", "Europe/Rome", ["Firenze"]),
    ("Athens", "Greece", "Europe/Athens", ["Athina", "Αθήνα"]),
    ("Moscow", "Russia", "Europe/Moscow", ["Moskva", "Москва"]),
    ("Kyiv", "Ukraine", "Europe/Kyiv", ["Kiev"]),
    ("Paris", "France", "Europe/Paris", []),
    ("Marseille", "France", "Europe/Paris", ["Marseilles"]),
    ("The Hague", "Netherlands", "Europe/Amsterdam", ["Den Haag"]),
    ("Reykjavik", "Iceland", "Atlantic/Reykjavik", ["Reykjavík"]),
    ("Tokyo", "Japan", "Asia/Tokyo", ["東京"]),
    ("Beijing", "China", "Asia/Shanghai", ["Peking", "北京"]),
    ("Mumbai", "India", "Asia/Kolkata", ["Bombay"]),
    ("Seoul", "South Korea", "Asia/Seoul", ["서울"]),
    ("Cairo", "Egypt", "Africa/Cairo", []),
    ("Nairobi", "Kenya", "Africa/Nairobi", []),
    ("São Paulo", "Brazil", "America/Sao_Paulo", ["Sao Paulo"]),
    ("Mexico City", "Mexico", "America/Mexico_City", ["Ciudad de México"]),
    ("Montreal", "Canada", "America/Toronto", ["Montréal"]),
    ("New York", "United States", "America/New_York", ["New York City", "NYC"]),
    ("Sydney", "Australia", "Australia/Sydney", []),
    ("Auckland", "New Zealand", "Pacific/Auckland", []),
    ("Buenos Aires", "Argentina", "America/Argentina/Buenos_Aires", []),
    ("Paris, Texas", "United States", "America/Chicago", ["Paris, TX"]),
    ("Portland, Oregon", "United States", "America/Los_Angeles", ["Portland, OR"]),
]

# Place names that need a clarifying question (several well-known places share them).
AMBIGUOUS_PLACES = {
    "Springfield": ["Springfield, Illinois", "Springfield, Massachusetts", "Springfield, Missouri"],
    "Portland": ["Portland, Oregon", "Portland, Maine"],
    "San Jose": ["San Jose, California", "San José, Costa Rica"],
    "Córdoba": ["Córdoba, Spain", "Córdoba, Argentina"],
    "Victoria": ["Victoria, British Columbia", "Victoria, Seychelles"],
    "Birmingham": ["Birmingham, England", "Birmingham, Alabama"],
}

# Wikipedia article title -> one-sentence summary (the fabricated tool result).
TOPICS = {
    "Ada Lovelace": "Ada Lovelace (1815–1852) was an English mathematician known for her work on Charles Babbage's "
                    "Analytical Engine; she published what is often called the first computer program.",
    "Marie Curie": "Marie Curie (1867–1934) was a Polish-French physicist and chemist who pioneered research on "
                   "radioactivity and was the first person to win Nobel Prizes in two sciences.",
    "Alan Turing": "Alan Turing (1912–1954) was an English mathematician and computer scientist who formalised "
                   "computation with the Turing machine and helped break Enigma during the Second World War.",
    "Nikola Tesla": "Nikola Tesla (1856–1943) was a Serbian-American inventor and engineer best known for his "
                    "contributions to the alternating-current electricity supply system.",
    "Frida Kahlo": "Frida Kahlo (1907–1954) was a Mexican painter known for her self-portraits and works "
                   "inspired by Mexican popular culture.",
    "Roald Amundsen": "Roald Amundsen (1872–1928) was a Norwegian explorer who led the first expedition to reach "
                      "the South Pole, in December 1911.",
    "Great Barrier Reef": "The Great Barrier Reef is the world's largest coral reef system, stretching over "
                          "2,300 kilometres off the coast of Queensland, Australia.",
    "Mount Kilimanjaro": "Mount Kilimanjaro is a dormant volcano in Tanzania and, at 5,895 metres, the highest "
                         "mountain in Africa.",
    "Rosetta Stone": "The Rosetta Stone is a granodiorite stele from 196 BC inscribed with the same decree in "
                     "hieroglyphic, Demotic and Greek scripts, which was key to deciphering hieroglyphs.",
    "Photosynthesis": "Photosynthesis is the process by which plants, algae and some bacteria convert light "
                      "energy, water and carbon dioxide into chemical energy stored in sugars, releasing oxygen.",
    "Black hole": "A black hole is a region of spacetime where gravity is so strong that nothing, not even light, "
                  "can escape once it crosses the event horizon.",
    "Titan (moon)": "Titan is the largest moon of Saturn and the only moon known to have a dense atmosphere and "
                    "stable bodies of surface liquid.",
    "Hanseatic League": "The Hanseatic League was a medieval commercial and defensive network of merchant guilds "
                        "and market towns in Northern Europe.",
    "Aurora": "An aurora is a natural light display in the sky, seen mostly in high-latitude regions, caused by "
              "charged particles from the solar wind interacting with the upper atmosphere.",
    "Printing press": "The printing press is a device for applying pressure to an inked surface on paper; "
                      "Johannes Gutenberg's movable-type press of around 1440 spread printing across Europe.",
    "Penicillin": "Penicillins are a group of antibiotics, the first discovered by Alexander Fleming in 1928 from "
                  "the Penicillium mould.",
    "Hubble Space Telescope": "The Hubble Space Telescope is a space telescope launched into low Earth orbit in "
                              "1990 and still in operation.",
    "Machu Picchu": "Machu Picchu is a 15th-century Inca citadel on a mountain ridge in southern Peru.",
    "Tardigrade": "Tardigrades are microscopic eight-legged animals known for surviving extreme conditions.",
    "Edvard Munch": "Edvard Munch (1863–1944) was a Norwegian painter best known for The Scream.",
    "Ibn Battuta": "Ibn Battuta (1304–1368/69) was a Moroccan scholar and explorer who travelled widely across "
                   "Africa, the Middle East, Asia and Europe.",
    "Hypatia": "Hypatia (c. 350–415) was a Neoplatonist philosopher, astronomer and mathematician in Alexandria.",
    "Okapi": "The okapi is an even-toed ungulate native to the Democratic Republic of the Congo and the closest "
             "living relative of the giraffe.",
    "Fjord": "A fjord is a long, narrow inlet with steep sides or cliffs, created by a glacier.",
}

# Descriptive searches (query -> the article it finds); titles are searched by name too.
SEARCHES = {
    "largest moon of Saturn": "Titan (moon)",
    "first expedition to the South Pole": "Roald Amundsen",
    "first computer program": "Ada Lovelace",
    "highest mountain in Africa": "Mount Kilimanjaro",
    "who painted The Scream": "Edvard Munch",
    "how plants make sugar from light": "Photosynthesis",
    "closest relative of the giraffe": "Okapi",
    "animals that survive in space": "Tardigrade",
    "who discovered penicillin": "Penicillin",
    "northern lights": "Aurora",
}

# convert_units: unit -> ways a user names it
UNIT_WORDS = {
    "km": ["km", "kilometres", "kilometers"], "m": ["metres", "meters"], "cm": ["cm", "centimetres"],
    "mile": ["miles"], "ft": ["feet", "ft"], "inch": ["inches"], "kg": ["kg", "kilograms", "kilos"],
    "g": ["grams", "g"], "lb": ["pounds", "lbs"], "oz": ["ounces", "oz"], "l": ["litres", "liters"],
    "ml": ["ml", "millilitres"], "gallon": ["gallons"], "celsius": ["degrees Celsius", "°C"],
    "fahrenheit": ["degrees Fahrenheit", "°F"],
}
UNIT_PAIRS = [("mile", "km"), ("km", "mile"), ("kg", "lb"), ("lb", "kg"), ("ft", "m"), ("m", "ft"),
              ("inch", "cm"), ("cm", "inch"), ("l", "gallon"), ("gallon", "l"), ("oz", "g"), ("g", "oz"),
              ("celsius", "fahrenheit"), ("fahrenheit", "celsius"), ("ml", "l"), ("km", "m")]
SAME_DIMENSION = {"mile": ["km", "m", "ft"], "km": ["mile", "m", "ft"], "kg": ["lb", "oz", "g"],
                  "lb": ["kg", "g", "oz"], "ft": ["m", "cm", "inch"], "m": ["ft", "km", "inch"],
                  "inch": ["cm", "m", "ft"], "cm": ["inch", "m", "ft"], "l": ["gallon", "ml"],
                  "gallon": ["l", "ml"], "oz": ["g", "kg", "lb"], "g": ["oz", "lb", "kg"],
                  "celsius": ["fahrenheit"], "fahrenheit": ["celsius"], "ml": ["l", "gallon"]}

# Forecast horizons: phrase -> days (1 = today, 2 = today and tomorrow)
WHEN = [("today", 1), ("for today", 1), ("tomorrow", 2), ("for tomorrow", 2), ("over the next 3 days", 3),
        ("for the next 5 days", 5), ("this week", 7), ("for the coming week", 7), ("for the next 10 days", 10),
        ("over the next two weeks", 14), ("for the next four days", 4)]
WHEN_L = {
    "de": [("heute", 1), ("morgen", 2), ("in den nächsten 5 Tagen", 5), ("diese Woche", 7)],
    "fr": [("aujourd'hui", 1), ("demain", 2), ("dans les 5 prochains jours", 5), ("cette semaine", 7)],
    "es": [("hoy", 1), ("mañana", 2), ("en los próximos 5 días", 5), ("esta semana", 7)],
}
UNIT_PHRASES = {"fahrenheit": ["in Fahrenheit", "in °F", "in fahrenheit please"],
                "celsius": ["in Celsius", "in °C", "in degrees Celsius"]}

# no_tool: general knowledge (question, answer)
FACTS = {
    "capital": [("Australia", "Canberra"), ("Canada", "Ottawa"), ("Brazil", "Brasília"), ("Kenya", "Nairobi"),
                ("Norway", "Oslo"), ("Japan", "Tokyo"), ("Turkey", "Ankara"), ("New Zealand", "Wellington"),
                ("Switzerland", "Bern"), ("Egypt", "Cairo")],
    "author": [("Hamlet", "William Shakespeare"), ("Pride and Prejudice", "Jane Austen"),
               ("One Hundred Years of Solitude", "Gabriel García Márquez"), ("War and Peace", "Leo Tolstoy"),
               ("A Doll's House", "Henrik Ibsen"), ("The Old Man and the Sea", "Ernest Hemingway"),
               ("Don Quixote", "Miguel de Cervantes"), ("Frankenstein", "Mary Shelley")],
    "symbol": [("gold", "Au"), ("iron", "Fe"), ("sodium", "Na"), ("silver", "Ag"), ("potassium", "K"),
               ("lead", "Pb"), ("oxygen", "O"), ("helium", "He")],
    "misc": [
        ("How many continents are there?", "There are seven continents: Africa, Antarctica, Asia, Australia "
         "(Oceania), Europe, North America and South America."),
        ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
        ("How many days are there in a leap year?", "A leap year has 366 days."),
        ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid."),
        ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
        ("How many sides does a hexagon have?", "A hexagon has six sides."),
        ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean on Earth."),
        ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide (CO₂) from the air."),
        ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ],
    # weather-adjacent concepts: the weather tools are offered, and must not be called
    "concept": [
        ("What's the difference between weather and climate?", "Weather is the state of the atmosphere at a given "
         "time and place, such as today's rain or sun; climate is the average of the weather over many years."),
        ("Why is the sky blue?", "Sunlight is scattered by the molecules of the air, and blue light is scattered "
         "much more than red light (Rayleigh scattering), so the sky looks blue."),
        ("What causes rain?", "Water vapour rises, cools and condenses into droplets in clouds; when the droplets "
         "grow heavy enough they fall as rain."),
        ("What is a heatwave?", "A heatwave is a period of unusually hot weather, often with high humidity, that "
         "lasts for several days."),
        ("How do meteorologists forecast the weather?", "They feed observations from weather stations, balloons, "
         "satellites and radar into numerical models of the atmosphere and interpret the results."),
        ("What does the humidity percentage mean?", "Relative humidity is how much water vapour the air holds "
         "compared with the most it could hold at that temperature."),
        ("Is it true that lightning never strikes the same place twice?", "No, that is a myth: lightning often "
         "strikes the same place repeatedly, especially tall structures."),
    ],
}

CHITCHAT = {
    "greet": (["Hi!", "Hello there", "Hey, good morning!", "hi :)"],
              ["Hello! How can I help you today?", "Hi! What can I do for you?"]),
    "howareyou": (["How are you doing today?", "how's it going?", "How are you?"],
                  ["I'm doing well, thanks for asking! How can I help?", "All good here. What can I do for you?"]),
    "thanks": (["Thanks a lot!", "thank you, that's all", "Great, thanks for your help."],
               ["You're welcome! Let me know if you need anything else.", "Happy to help!"]),
    "identity": (["Who are you?", "What can you do?", "Are you a human?"],
                 ["I'm an AI assistant. I can answer questions and, when it helps, use tools such as a weather "
                  "service or Wikipedia.", "I'm an AI assistant, not a human. Ask me anything!"]),
    "joke": (["Tell me a joke.", "Do you know any good jokes?", "Make me laugh"],
             ["Why did the scarecrow win an award? Because he was outstanding in his field!",
              "I told my computer I needed a break, and it said: 'No problem, I'll go to sleep.'"]),
}

# Requests that no tool serves: (request, answer)
TASKS = {
    "poem": [("Write a haiku about autumn.", "Crisp leaves drift and fall\nthe maple lets go of gold\nsoft "
              "rain on the path"), ("Write a two-line poem about the sea.", "The sea keeps every secret it is "
              "told,\nand sings them back in silver and in gold.")],
    "translate": [("How do you say 'thank you' in Spanish?", "'Thank you' in Spanish is 'gracias'."),
                  ("Translate 'good morning' into French.", "'Good morning' in French is 'bonjour'."),
                  ("What is 'cheers' in German?", "'Cheers' in German is 'Prost!'."),
                  ("How do I say 'good night' in Norwegian?", "'Good night' in Norwegian is 'god natt'.")],
    "recipe": [("Give me a simple recipe for pancakes.", "Whisk 1 cup flour, 1 tbsp sugar, 2 tsp baking powder "
                "and a pinch of salt; add 1 cup milk, 1 egg and 2 tbsp melted butter. Cook ladlefuls in a hot "
                "buttered pan until bubbles form, flip, and cook another minute."),
               ("How do I boil an egg?", "Put the egg in boiling water: 6–7 minutes for a soft yolk, 10–12 for "
                "hard-boiled, then cool it in cold water.")],
    "advice": [("How can I sleep better?", "Keep a regular schedule, avoid screens and caffeine late in the day, "
                "keep the bedroom dark and cool, and get daylight and exercise during the day."),
               ("Any tips for learning a new language?", "Practise a little every day, speak early even with "
                "mistakes, learn common words first, and listen to native speakers.")],
    "writing": [("Draft a short email to my boss saying I'll be late today.", "Subject: Running late today\n\n"
                 "Hi,\n\nI'm running late this morning and expect to be in about an hour later than usual. "
                 "Sorry for the inconvenience.\n\nBest regards"),
                ("Suggest a name for my new cat.", "How about Miso, Pepper, Luna or Biscuit?")],
}

# near-miss irrelevance: (food, its calories) — the unit converter is offered, the answer is general knowledge
FOODS = [("a banana", "A medium banana has about 105 calories."), ("an apple", "A medium apple has about 95 calories."),
         ("a boiled egg", "A large boiled egg has about 78 calories."),
         ("a slice of white bread", "A slice of white bread has about 75 calories."),
         ("a cup of cooked rice", "A cup of cooked white rice has about 200 calories."),
         ("an avocado", "A medium avocado has about 240 calories."),
         ("a glass of whole milk", "A 250 ml glass of whole milk has about 150 calories."),
         ("a tablespoon of olive oil", "A tablespoon of olive oil has about 120 calories.")]

# clarify: words that vary a request whose missing argument stays missing
CONDITION_WORDS = ["sunny", "raining", "windy", "cold", "warm", "foggy", "snowing", "humid"]
PEOPLE = ["sister", "brother", "mother", "father", "friend", "colleague", "boss", "grandmother"]
SUBJECTS = ["history", "biology", "chemistry", "geography", "art", "physics", "music"]

# breadth (README part 9): the new families' facts, chitchat and tasks (llamatune.data.funccall_breadth)
from llamatune.data import funccall_breadth as _breadth  # noqa: E402  (a leaf: plain data)

FACTS.update(_breadth.FACTS)
CHITCHAT.update(_breadth.CHITCHAT)
TASKS.update(_breadth.TASKS)
