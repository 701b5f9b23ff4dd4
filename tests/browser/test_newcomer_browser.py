"""Issue 22, round two: the Noise tab as a newcomer opens it, and labels read whole at 1400 and 420 px."""

import pytest

from tests.helpers import TAB_SHOWN, open_tab, wait_text

pytestmark = pytest.mark.browser

# Click the Noise tab, then, frame by frame, wait for the first frame that shows the strip: whether each of its
# images is there (loaded, with pixels) in that frame.
STRIP_IN_ITS_FIRST_FRAME = """async () => {
  [...document.querySelectorAll("button[role='tab']")].find(b => b.innerText.trim() === 'Noise').click();
  for (;;) {
    await new Promise(r => requestAnimationFrame(r));
    const images = [...document.querySelectorAll('#noise-strip img')];
    if (images.length) return images.map(i => i.complete && i.naturalWidth > 0);
  }
}"""


def test_the_noise_tab_opens_with_its_strip_and_a_typed_strength_moves_the_start(page):
    """Issue 22 (5): the strip's images are there in the first frame the Noise tab shows (they were fetched only
    then, and painted after the plots' drawing). Issue 22 (9): a strength typed and Entered moves the "noised to
    t" line, as Tab does."""
    # The page has loaded (the images it fetches as it loads, fetched), as a person waits before clicking a tab.
    page.wait_for_function("() => window.wbPreloaded?.every(i => i.complete)", timeout=30_000)
    shown = page.evaluate(STRIP_IN_ITS_FIRST_FRAME)
    assert len(shown) == 8 and all(shown), f"the strip's images in its first frame: {shown}"

    page.locator("#i2i-section").scroll_into_view_if_needed()
    assert page.locator("#i2i-start").inner_text().startswith("Strength 0.6: noised to t = 568 of 1000")
    box = page.locator("#i2i-strength input[data-testid='number-input']")
    box.fill("0.3")
    box.press("Enter")
    assert wait_text(page, "i2i-start", "Strength 0.3: noised to t =").startswith("Strength 0.3: noised to t = 59 ")


# Each label, caption and line of text a person reads, shown (on screen or not) but cut: wider than its box.
CUT_TEXT = """() => [...document.querySelectorAll(
    "[data-testid='block-label'], [data-testid='block-info'], .caption-label, .wb-caption, .prose p, label span")]
  .filter(e => e.offsetParent !== null && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
  .map(e => `${e.closest('[id]')?.id}: ${e.innerText.trim()}`)"""
# Each line of text squeezed narrower than its longest word (so that it wraps letter by letter).
SQUEEZED_TEXT = r"""() => {
  const ruler = document.createElement('canvas').getContext('2d');
  return [...document.querySelectorAll('.prose p')].filter(e => e.offsetParent !== null && e.innerText.trim())
    .filter(e => {
      ruler.font = getComputedStyle(e).font;
      return Math.max(...e.innerText.split(/\s+/).map(w => ruler.measureText(w).width)) > e.clientWidth + 1;
    }).map(e => `${e.closest('[id]')?.id}: ${e.innerText.trim()}`);
}"""


# The tabs a newcomer walks through.
SHOWN = {tab: TAB_SHOWN[tab] for tab in ("Text to image", "Unconditional", "Noise", "Training", "History")}


def test_labels_and_captions_read_whole_wide_and_narrow(page):
    """Issue 22 (8): at 1400x1000 and at 420 px wide, no label, caption or line of text in the tabs a newcomer
    walks through is cut (at 420 px the Noise strip's captions read "t = 0, √ᾱ = 1.…") or squeezed to wrap letter
    by letter (History's "Page 1 of 1 · 0 images" at 420 px)."""
    cut = {}
    for width, height in ((1400, 1000), (420, 900)):
        page.set_viewport_size({"width": width, "height": height})
        if width < 600:  # the tab bar has folded the tabs that no longer fit into its menu
            page.get_by_role("button", name="More tabs").wait_for(state="visible")
        for tab in SHOWN:
            open_tab(page, tab)
            page.locator(SHOWN[tab]).first.wait_for(state="visible")
            if tab == "History":
                wait_text(page, "history-counts", "Page 1 of")
            found = page.evaluate(CUT_TEXT) + page.evaluate(SQUEEZED_TEXT)
            if found:
                cut[f"{tab} at {width} px"] = found
    assert not cut, f"cut text: {cut}"
