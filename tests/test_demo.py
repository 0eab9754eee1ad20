"""The web demo, end to end in a real headless browser (Debian's chromium + chromedriver, driven by Selenium): load
the page, change the controls, press Generate, and check the grid shown is the one ``demo.draw`` makes."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from ddpmkit.errors import DdpmkitError

pytest.importorskip("gradio", reason="the demo's extra: pip install 'ddpmkit[demo]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium drives the browser")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="needs Debian's chromium and chromium-driver (scripts/install.sh test)")
# Run against a real model and keep the screenshot (the README's): DDPMKIT_DEMO_CHECKPOINT=runs/quick
# DDPMKIT_DEMO_SCREENSHOT=docs/images/demo.png pytest tests/test_demo.py
CHECKPOINT, SCREENSHOT = os.environ.get("DDPMKIT_DEMO_CHECKPOINT"), os.environ.get("DDPMKIT_DEMO_SCREENSHOT")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1100"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_conditional_checkpoint):
    from ddpmkit.demo import serve

    checkpoint = CHECKPOINT or str(tiny_conditional_checkpoint)
    running = serve(checkpoint, port=free_port(), device="cpu", block=False, progress=False)
    yield checkpoint, running
    running.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*BROWSER_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def set_number(driver, container_id: str, value: int) -> None:
    """Type into the number box of a Gradio slider or number field, as a user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{container_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


@needs_browser
def test_the_page_draws_the_asked_for_grid(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from ddpmkit.demo import draw
    from ddpmkit.sampling import DiffusionSampler

    checkpoint, running = served
    browser.get(running.url)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "generate")))
    boxes = browser.find_elements(By.CSS_SELECTOR, "#classes input[type=checkbox]")
    names = [b.get_attribute("name") for b in boxes]
    for box in boxes[1:4]:  # four classes start ticked: keep the first, untick three, tick the fifth
        box.click()
    boxes[4].click()
    chosen = [names[0], names[4]]
    set_number(browser, "steps", 5)
    set_number(browser, "seed", 7)
    set_number(browser, "count", 3)
    browser.find_element(By.ID, "generate").click()
    shown = WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid img[src]"))[0]
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", shown) > 0)
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#files a")) >= 6)

    # What the page shows is what draw() makes for the same choices: 2 classes x 3 images from seed 7, 5 steps.
    sampler = DiffusionSampler(checkpoint, device="cpu")
    expected = draw(sampler, tmp_path / "expected", chosen, 3, 1.0, "sde-dpm++2m", 5, 7)
    with urllib.request.urlopen(shown.get_attribute("src")) as response:
        (tmp_path / "shown.png").write_bytes(response.read())
    assert Image.open(tmp_path / "shown.png").size == Image.open(expected.grid).size
    assert Image.open(tmp_path / "shown.png").tobytes() == Image.open(expected.grid).tobytes()
    assert browser.find_elements(By.CSS_SELECTOR, "#animation img[src]")
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#files a")]
    assert sorted(urllib.parse.unquote(link).rsplit("/", 1)[-1] for link in links) == \
        sorted(p.name for p in expected.images)

    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "demo.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] >= 1000


def test_draw_refuses_what_it_cannot_do(tiny_conditional_checkpoint, tmp_path):
    from ddpmkit.demo import MAX_IMAGES, draw
    from ddpmkit.sampling import DiffusionSampler

    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    with pytest.raises(DdpmkitError, match="choose at least one class"):
        draw(sampler, tmp_path, [], 2, 1.0, "ddim", 3, 0)
    with pytest.raises(DdpmkitError, match=f"at most {MAX_IMAGES}"):
        draw(sampler, tmp_path, ["0", "1"], MAX_IMAGES, 1.0, "ddim", 3, 0)
    with pytest.raises(DdpmkitError, match="steps must be between 1 and T=10"):
        draw(sampler, tmp_path, ["0"], 2, 1.0, "ddim", 50, 0)
    with pytest.raises(DdpmkitError, match="unknown class 'cat'; this model's classes are 0, 1, 2"):
        draw(sampler, tmp_path, ["cat"], 2, 1.0, "ddim", 3, 0)
    with pytest.raises(DdpmkitError, match="at least one image"):
        draw(sampler, tmp_path, ["0"], 0, 1.0, "ddim", 3, 0)
    # A seed past int64 reached torch.Generator.manual_seed and came back as a traceback.
    with pytest.raises(DdpmkitError, match=r"the seed must be a whole number from 0 to 9223372036854775806, got 10"):
        draw(sampler, tmp_path, ["0"], 2, 1.0, "ddim", 3, 10**20)
    with pytest.raises(DdpmkitError, match="the seed must be"):
        draw(sampler, tmp_path, ["0"], 2, 1.0, "ddim", 3, -1)


def test_class_names_may_hold_commas(tiny_conditional_checkpoint, tmp_path):
    """A class named "T-shirt, top" is one class (the page passes names; a class list would split it in two)."""
    import torch

    from ddpmkit.demo import draw
    from ddpmkit.sampling import DiffusionSampler

    state = torch.load(tiny_conditional_checkpoint, map_location="cpu", weights_only=False)
    state["class_names"] = ["T-shirt, top", *state["class_names"][1:]]
    sampler = DiffusionSampler(state, device="cpu")
    drawn = draw(sampler, tmp_path / "comma", ["T-shirt, top", "1"], 2, 1.0, "ddim", 3, 5)
    plain = draw(DiffusionSampler(tiny_conditional_checkpoint, device="cpu"), tmp_path / "plain", ["0", "1"], 2, 1.0,
                 "ddim", 3, 5)
    assert [Image.open(p).tobytes() for p in drawn.images] == [Image.open(p).tobytes() for p in plain.images]


def test_requests_leave_no_files_behind(served, tmp_path):
    """Each request's folder goes at the next request (its results still download: Gradio serves its copies) and
    the whole folder when the demo stops; they were all kept before, until the disk filled."""
    from gradio_client import Client

    from ddpmkit.demo import draw, serve
    from ddpmkit.sampling import DiffusionSampler

    checkpoint, _ = served
    running = serve(checkpoint, port=free_port(), device="cpu", block=False, progress=False)
    try:
        client = Client(running.url, verbose=False)
        ask = dict(classes=["0"], guidance=1.0, sampler_name="ddim", steps=3, count=2, api_name="/generate")
        first = client.predict(seed=0, **ask)
        second = client.predict(seed=2, **ask)
        assert [p.name for p in running.out_root.iterdir()] == ["request_000001"]
        expected = draw(DiffusionSampler(checkpoint, device="cpu"), tmp_path, ["0"], 2, 1.0, "ddim", 3, 2)
        assert Image.open(second[0]).tobytes() == Image.open(expected.grid).tobytes() != Image.open(first[0]).tobytes()
    finally:
        running.close()
    assert not running.out_root.exists()


def test_unusable_addresses_are_refused_in_one_line(tiny_conditional_checkpoint, capsys):
    """Gradio says only "Cannot find empty port" whatever the cause (it said "choose another --port" for a
    wrong --host); the address is checked first, before the model loads."""
    from ddpmkit.cli import main
    from ddpmkit.demo import check_address

    assert main(["demo", "--checkpoint", str(tiny_conditional_checkpoint), "--host", "192.0.2.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpmkit: error: --host 192.0.2.1 is not an address of this machine") and err.count("\n") == 1

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DdpmkitError, match=f"port {port} on 127.0.0.1 is in use .*choose another --port"):
            check_address("127.0.0.1", port)
    with pytest.raises(DdpmkitError, match="--host 192.0.2.1 is not an address of this machine; use 127.0.0.1"):
        check_address("192.0.2.1", free_port())  # TEST-NET-1: never this machine's
    with pytest.raises(DdpmkitError, match="'no-such-host.invalid' is not an address or a name"):
        check_address("no-such-host.invalid", free_port())
    check_address("127.0.0.1", free_port())


def test_the_demo_says_what_to_install_without_gradio(tiny_conditional_checkpoint, monkeypatch, capsys):
    import sys

    from ddpmkit.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert main(["demo", "--checkpoint", str(tiny_conditional_checkpoint)]) == 2
    assert "pip install 'ddpmkit[demo]'" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    from ddpmkit.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's folder would go
    assert main(["demo", "--checkpoint", str(tmp_path / "missing.pt"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    # The start-up bar clears itself (it draws with carriage returns): the one line left is the error.
    assert err.count("\n") == 1 and err.split("\r")[-1].startswith("ddpmkit: error:") and "missing.pt" in err
    assert not list(tmp_path.glob("ddpmkit-demo-*"))


def test_a_cleared_box_is_a_message_not_a_traceback(served):
    """Gradio sends None for an emptied number box; int(None) raised TypeError: a bare "Error" on the page and a
    traceback on the server's console."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, running = served
    client = Client(running.url, verbose=False)
    ask = dict(classes=["0"], guidance=1.0, sampler_name="ddim", steps=3, seed=0, count=2, api_name="/generate")
    with pytest.raises(AppError, match="fill in the seed"):  # (sliders are checked by Gradio itself)
        client.predict(**{**ask, "seed": None})


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_stopping_the_demo_exits_as_a_shell_expects_and_deletes_its_files(tiny_conditional_checkpoint, tmp_path,
                                                                        signal_name):
    """SIGTERM (docker stop, systemd) killed the demo at once, leaving its folders; Ctrl-C was swallowed by
    Gradio (exit 0). Both now close the server, delete the request folders and Gradio's copies, and exit 128 + N."""
    import signal
    import subprocess
    import sys

    from gradio_client import Client

    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    (tmp_path / "tmp").mkdir()
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "ddpmkit", "demo", "--checkpoint", str(tiny_conditional_checkpoint),
                             "--port", str(port), "--device", "cpu", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = demo.stdout.readline()
        assert f"at http://127.0.0.1:{port}" in line, line + demo.stderr.read()
        Client(f"http://127.0.0.1:{port}", verbose=False).predict(
            classes=["0"], guidance=1.0, sampler_name="ddim", steps=3, seed=0, count=2, api_name="/generate")
        assert list((tmp_path / "tmp").glob("ddpmkit-demo-*/request_*"))
        assert [p for p in (tmp_path / "gradio").rglob("*") if p.is_file()]
        demo.send_signal(getattr(signal, signal_name))
        _, err = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 128 + getattr(signal, signal_name), err
    assert err.strip().splitlines()[-1] == "ddpmkit: interrupted"
    assert not list((tmp_path / "tmp").glob("ddpmkit-demo-*"))
    assert not [p for p in (tmp_path / "gradio").rglob("*") if p.is_file()]


# -- the Edit tab (src/ddpmkit/demo_edit.py) -------------------------------------------------------------------------

def painted_layer(side: int, block: int, pixels: list[tuple[int, int]], alpha: int = 255) -> Image.Image:
    """An editor layer of ``side`` pixels with the model pixels ``pixels`` (row, column; ``block`` editor pixels a
    side) painted over entirely."""
    import numpy as np

    layer = np.zeros((side, side, 4), np.uint8)
    for row, col in pixels:
        layer[row * block: (row + 1) * block, col * block: (col + 1) * block] = (255, 0, 255, alpha)
    return Image.fromarray(layer)


def test_the_editor_value_becomes_the_image_and_the_mask():
    """The page's own enlargement comes back exactly; painted (any opacity, any layer) = generate, a model pixel
    counting as painted when its centre is (nearest); other pictures are converted to the model's size and mode."""
    import numpy as np
    import torch

    from ddpmkit.demo_edit import EDITOR_SIDE, as_the_model_sees, editor_image, editor_value, painted_mask

    shape = (1, 8, 8)
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    value = editor_value(image)
    assert value["background"].size == (EDITOR_SIDE, EDITOR_SIDE) and value["layers"] == []
    assert torch.equal(editor_image(value, shape), image)

    block = EDITOR_SIDE // 8
    stroke = np.asarray(painted_layer(EDITOR_SIDE, block, [(2, 1), (2, 2), (3, 1), (3, 2)])).copy()
    stroke[6 * block: 6 * block + 8, 5 * block: 5 * block + 8, 3] = 255  # a corner of pixel (6, 5), not its centre
    faint = painted_layer(EDITOR_SIDE, block, [(7, 7)], alpha=20)
    expected = torch.zeros(8, 8)
    expected[2:4, 1:3] = 1
    expected[7, 7] = 1
    mask = painted_mask({**value, "layers": [Image.fromarray(stroke), faint]}, shape)
    assert torch.equal(mask, expected)

    red = Image.new("RGB", (40, 30), (255, 0, 0))  # another size, another mode: ITU-R 601 luma of red is 76
    assert torch.equal(editor_image({"background": red}, shape), torch.full(shape, 76, dtype=torch.uint8))
    clear = Image.new("RGBA", (5, 5), (0, 0, 0, 0))  # transparency is white; greyscale to RGB for an RGB model
    assert torch.equal(editor_image({"background": clear}, (3, 8, 8)), torch.full((3, 8, 8), 255, dtype=torch.uint8))
    # The editor reports every image it loads as an upload; one shown as the model sees it stays, and its strokes.
    assert as_the_model_sees({**value, "layers": [faint]}, shape) is None
    shown = as_the_model_sees({"background": red, "layers": [], "composite": red}, shape)  # an upload, converted
    assert shown["background"].size == (EDITOR_SIDE, EDITOR_SIDE)
    assert torch.equal(editor_image(shown, shape), torch.full(shape, 76, dtype=torch.uint8))


def test_the_edit_tab_is_a_thin_layer_over_inpaint_and_edit(tiny_conditional_checkpoint):
    import torch

    from ddpmkit.data import to_unit_range
    from ddpmkit.demo_edit import EDITOR_SIDE, NO_CLASS, editor_value, image_to_image, inpaint_painted
    from ddpmkit.sampling import DiffusionSampler

    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    image = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    painted = [(r, c) for r in range(2, 5) for c in range(1, 6)]
    value = {**editor_value(image), "layers": [painted_layer(EDITOR_SIDE, EDITOR_SIDE // 8, painted)]}
    mask = torch.zeros(8, 8)
    mask[2:5, 1:6] = 1

    completed = inpaint_painted(sampler, value, "replace", 1, 2.0, 3, 5, 4)
    assert torch.equal(completed, sampler.inpaint(image[None], mask, method="replace", completions=3, seed=5, steps=4,
                                                  labels=1, guidance=2.0, progress=False))
    unit = to_unit_range(image)[0]
    assert torch.equal(completed[:, 0][:, mask == 0], unit[mask == 0].expand(3, -1))
    assert all(bool((c[0][mask == 1] != unit[mask == 1]).any()) for c in completed)

    kept = image_to_image(sampler, value, 0.0, NO_CLASS, 2.0, 2, 0, None)  # strength 0 keeps the image
    assert torch.equal(kept, unit[None, None].expand(2, 1, 8, 8))
    assert torch.equal(image_to_image(sampler, value, 0.6, 0, 2.0, 2, 3, 4),
                       sampler.edit(image[None], 0.6, labels=0, guidance=2.0, completions=2, seed=3, steps=4,
                                    progress=False))


def test_the_edit_tab_says_what_is_wrong_in_one_line(served, tmp_path):
    """What the editor sends that cannot be inpainted comes back as the page's error message, not a bare "Error"."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from ddpmkit.demo_edit import EDITOR_SIDE

    _, running = served
    client = Client(running.url, verbose=False)
    Image.new("L", (EDITOR_SIDE, EDITOR_SIDE), 100).save(tmp_path / "background.png")
    block = EDITOR_SIDE // 8
    painted_layer(EDITOR_SIDE, block, [(3, 3)]).save(tmp_path / "stroke.png")
    painted_layer(EDITOR_SIDE, block, [(r, c) for r in range(8) for c in range(8)]).save(tmp_path / "all.png")

    def value(*layers):
        return {"background": handle_file(str(tmp_path / "background.png")), "composite": None,
                "layers": [handle_file(str(tmp_path / name)) for name in layers]}

    ask = dict(value=value("stroke.png"), method="replace", class_index=0, guidance=1.0, completions=2, seed=0,
               steps=3, api_name="/inpaint")
    assert len(client.predict(**ask)) == 2
    for change, message in [(dict(value=None), "upload an image or pick a test image first"),
                            (dict(value=value()), "paint over the part of the image to generate"),
                            (dict(value=value("all.png")), "the mask is all white: nothing is known"),
                            (dict(method="repaint", steps=2), r"jump_length 2 must be smaller than steps \(2\)"),
                            (dict(seed=None), "fill in the seed")]:
        with pytest.raises(AppError, match=message):
            client.predict(**{**ask, **change})
    sdedit = {**{k: v for k, v in ask.items() if k != "method"}, "strength": 0.5, "api_name": "/sdedit"}
    with pytest.raises(AppError, match="upload an image or pick a test image first"):
        client.predict(**{**sdedit, "value": None})


@needs_browser
def test_the_edit_tab_inpaints_where_the_mouse_painted(served, browser, tmp_path):
    """Pick a test image, drag the brush across its middle with the mouse, press Inpaint: every completion keeps
    the unpainted pixels exactly and changes the painted ones."""
    from dataclasses import replace

    import numpy as np
    import torch
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from ddpmkit.data import load_images
    from ddpmkit.sampling import DiffusionSampler

    checkpoint, running = served
    sampler = DiffusionSampler(checkpoint, device="cpu")
    try:
        original = load_images(replace(sampler.config.data, download=False), "test").images[0]
    except DdpmkitError:
        pytest.skip("the model's test images are not on this machine")
    c, h, w = sampler.image_shape

    browser.get(running.url)
    edit = (By.XPATH, "//button[@role='tab'][normalize-space()='Edit']")
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable(edit)).click()
    first = (By.CSS_SELECTOR, "#test-images button.thumbnail-item")
    WebDriverWait(browser, 30).until(EC.element_to_be_clickable(first)).click()
    pan = (By.CSS_SELECTOR, "#editor button[title=Pan]")  # enabled once the editor holds the image
    WebDriverWait(browser, 30).until(lambda d: d.find_element(*pan).is_enabled())
    canvas = browser.find_elements(By.CSS_SELECTOR, "#editor canvas")[-1]
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, -100, 0).click_and_hold()
    for _ in range(4):  # through the middle rows, in steps, as a hand moves
        stroke.move_by_offset(50, 0)
    stroke.release().perform()
    set_number(browser, "edit-steps", 6)
    set_number(browser, "completions", 3)
    browser.find_element(By.ID, "inpaint").click()
    thumbnails = "#results button.thumbnail-item img[src]"
    shown = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, thumbnails)
                                             if len(d.find_elements(By.CSS_SELECTOR, thumbnails)) == 3 else None)

    band = torch.zeros(h, w, dtype=torch.bool)  # the stroke's rows and a margin: the only place that may change
    band[h // 4: 3 * h // 4] = True
    for k, img in enumerate(shown):
        with urllib.request.urlopen(img.get_attribute("src")) as response:
            (tmp_path / f"{k}.png").write_bytes(response.read())
        picture = Image.open(tmp_path / f"{k}.png").convert("L" if c == 1 else "RGB").resize((w, h), Image.NEAREST)
        completed = torch.from_numpy(np.asarray(picture).reshape(h, w, c).copy()).permute(2, 0, 1)
        assert torch.equal(completed[:, ~band], original[:, ~band]), f"completion {k} changed unpainted pixels"
        assert bool((completed[:, band] != original[:, band]).any()), f"completion {k} left the painted part"
