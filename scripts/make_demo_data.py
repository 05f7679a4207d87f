"""Generate the demo's bundled sample catalogue and click log (deterministic).

    python scripts/make_demo_data.py

Writes service/demo/catalogue.json and service/demo/clicks.csv. The log has structure a
recommender should find: shoppers stay mostly within a category, and some products are
usually viewed together (a grinder after an espresso machine, a tent after a sleeping bag).
Some carts hold bundles (an espresso machine with beans and a tamper): what "goes with your
cart" finds. The shop's own brand is tagged (what its promotion favours), and a few products
arrived today: records without a single event (what the new-items shelf brings in).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

CATEGORIES = {
    "Coffee": ["Espresso machine", "Burr grinder", "Milk frother", "Pour-over kettle",
               "Coffee scale", "Tamper", "Espresso beans", "Filter papers"],
    "Tea": ["Sencha green tea", "Cast-iron teapot", "Matcha whisk", "Earl Grey tin",
            "Tea infuser", "Oolong sampler", "Chai spice mix", "Glass tea cups"],
    "Outdoors": ["Two-person tent", "Sleeping bag", "Camping stove", "Headlamp",
                 "Trekking poles", "Water filter", "Insulated bottle", "Daypack"],
    "Kitchen": ["Chef's knife", "Cutting board", "Cast-iron skillet", "Dutch oven",
                "Knife sharpener", "Spice rack", "Silicone spatula", "Mixing bowls"],
    "Audio": ["Wireless headphones", "Bookshelf speakers", "Turntable", "DAC amplifier",
              "Headphone stand", "Vinyl cleaner", "Bluetooth speaker", "Earbuds"],
    "Books": ["The Coffee Atlas", "Salt Fat Acid Heat", "Wild Camping Guide",
              "World of Tea", "Hi-Fi Handbook", "Knife Skills", "Trail Cooking",
              "Home Barista"],
}
HOUSE_BRAND = ["Espresso beans", "Earl Grey tin", "Insulated bottle", "Spice rack",
               "Headphone stand", "Home Barista"]
NEW = {"Coffee": "Cold brew maker", "Tea": "Yerba mate gourd", "Outdoors": "Camp hammock",
       "Kitchen": "Pasta machine", "Audio": "Record crate", "Books": "The Tea Road"}
BUNDLES = [("Espresso machine", "Espresso beans", "Tamper"),
           ("Two-person tent", "Sleeping bag", "Headlamp"),
           ("Turntable", "Vinyl cleaner", "Record crate"),
           ("Chef's knife", "Cutting board", "Knife sharpener"),
           ("Cast-iron teapot", "Glass tea cups", "Oolong sampler"),
           ("Camping stove", "Trail Cooking", "Water filter")]
PAIRS = [("Espresso machine", "Burr grinder"), ("Sleeping bag", "Two-person tent"),
         ("Turntable", "Vinyl cleaner"), ("Chef's knife", "Knife sharpener"),
         ("Cast-iron teapot", "Sencha green tea"), ("Camping stove", "Trail Cooking")]


def main() -> None:
    rng = random.Random(20261126)
    out = Path(__file__).resolve().parent.parent / "service" / "demo"
    catalogue = []
    by_name = {}
    number = 1000
    for category, names in CATEGORIES.items():
        for name in names:
            number += 1
            product = {"id": str(number), "name": name, "category": category,
                       "price": round(rng.uniform(6, 400), 2)}
            catalogue.append(product)
            by_name[name] = product
    for product in catalogue:
        if product["name"] in HOUSE_BRAND:
            product["tags"] = ["house-brand"]
    extra = random.Random(20261205)  # apart: the log above stays as it was
    for category, name in NEW.items():
        number += 1
        product = {"id": str(number), "name": name, "category": category,
                   "price": round(extra.uniform(6, 400), 2)}
        catalogue.append(product)
        by_name[name] = product
    (out / "catalogue.json").write_text(json.dumps(catalogue, indent=1, ensure_ascii=False)
                                        + "\n", encoding="utf-8")
    partner = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
    rows = []
    span = 7 * 86400
    for s in range(1500):
        category = rng.choice(list(CATEGORIES))
        t = rng.uniform(0, span - 3600)
        length = rng.randint(2, 7)
        items: list[str] = []
        while len(items) < length:
            if items and items[-1] in partner and rng.random() < 0.8:
                name = partner[items[-1]]
            elif rng.random() < 0.85:
                name = rng.choice(CATEGORIES[category])
            else:
                name = rng.choice(rng.choice(list(CATEGORIES.values())))
            items.append(name)
        for pos, name in enumerate(items):
            t += rng.uniform(5, 90)
            kind = "view" if pos < len(items) - 1 or rng.random() < 0.8 else "add_to_cart"
            rows.append((f"demo-{s:04d}", by_name[name]["id"], round(span - t, 1), kind))
    for s in range(300):  # carts of a bundle's items, some of them, after a view or two
        bundle = [n for n in extra.choice(BUNDLES) if n not in NEW.values()]
        t = extra.uniform(0, span - 3600)
        for name in extra.sample(bundle, extra.randint(2, len(bundle))):
            t += extra.uniform(5, 90)
            rows.append((f"cart-{s:04d}", by_name[name]["id"], round(span - t, 1), "view"))
            t += extra.uniform(5, 60)
            rows.append((f"cart-{s:04d}", by_name[name]["id"], round(span - t, 1),
                         "add_to_cart"))
    with (out / "clicks.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["session_id", "item_id", "seconds_ago", "type"])
        writer.writerows(rows)
    print(f"{len(catalogue)} products, {len(rows)} events")


if __name__ == "__main__":
    main()
