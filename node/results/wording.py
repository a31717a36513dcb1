"""The words of fracnode's human-readable labels: one finding, one sentence, everywhere.

The GSPS text, the secondary capture's burned-in label and the dashboard preview say the
category in words, the probability in percent and, where the result is not "fracture likely",
the operating point it was compared with, then the site:

    AI: fracture likely (87 %), lower limb
    AI: possible fracture (31 %; threshold 7 %), site not determined
    AI: no fracture found (4 %; threshold 7 %), C2 vertebra

The SR's Comment says the finding only ("AI: possible fracture, site not determined"): the same
measurement group holds the probability, which viewers print on the next line ("Probability:
31.00 %"), and OHIF places the label beside the image, where a long line is cut off.

The words come from the SR template (`wording:`), so a site can translate them.
"""

from __future__ import annotations

from dataclasses import dataclass


def percent(value: float) -> str:
    """A probability in [0, 1] as whole percent; the extremes say so instead of rounding to 0/100."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]")
    if value < 0.005:
        return "<1 %"
    if value > 0.995:
        return ">99 %"
    return f"{round(100 * value)} %"


def site_phrase(meaning: str) -> str:
    """A site's code meaning as it reads mid-sentence: "Lower limb" → "lower limb", "C2 vertebra"
    stays (a capital followed by a capital or digit is a name, not a sentence start)."""
    if len(meaning) > 1 and meaning[0].isupper() and meaning[1].islower():
        return meaning[0].lower() + meaning[1:]
    return meaning


def threshold_percent(value: float) -> str:
    """An operating point in percent with up to one decimal: 0.07 → "7 %", 0.065 → "6.5 %"."""
    return f"{round(100 * value, 1):g} %"


@dataclass(frozen=True)
class Wording:
    prefix: str  # "AI": says who found it
    categories: dict[str, str]  # fracture → "fracture likely", ...
    site_not_determined: str

    def words(self, category: str) -> str:
        try:
            return self.categories[category]
        except KeyError:
            raise ValueError(f"unknown category {category!r} (known: {sorted(self.categories)})") from None

    def finding(self, category: str, site: str) -> str:
        """The finding without its numbers, for the SR (whose NUM item holds them)."""
        return f"{self.prefix}: {self.words(category)}, {site}"

    def label(self, category: str, probability: float, site: str, threshold: float | None) -> str:
        """One line: `threshold` (the lowest operating point) is shown unless the category is
        "fracture", where the word "likely" already says the number is high."""
        numbers = [percent(probability)]
        if threshold is not None and category != "fracture":
            numbers.append(f"threshold {threshold_percent(threshold)}")
        return f"{self.prefix}: {self.words(category)} ({'; '.join(numbers)}), {site}"
