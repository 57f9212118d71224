"""The web demo at `/`, end to end in headless Chromium with a fake microphone, and its off switch."""

from __future__ import annotations

import math
import os
import shutil
import struct
import time
import wave
from pathlib import Path

import pytest

from glm4voice_api.app import create_app
from glm4voice_api.config import Settings
from tests.api.conftest import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]


def _routes(web_demo: bool) -> set[str]:
    return {getattr(r, "path", "") for r in create_app(Settings(web_demo=web_demo)).routes}


def test_web_demo_setting_switches_the_routes() -> None:
    assert {"/", "/web/{name}"} <= _routes(True)
    assert not {"/", "/web/{name}"} & _routes(False)


def test_web_demo_serves_only_its_own_files() -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Settings()))  # no `with`: the lifespan (engine) does not start
    page = client.get("/")
    assert page.status_code == 200 and "GLM-4-Voice demo" in page.text
    assert client.get("/web/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/web/style.css").status_code == 200
    for bad in ("/web/nope.js", "/web/..%2Fapp.py", "/web/%2E%2E%2Fconfig.py", "/web/.hidden.js"):
        response = client.get(bad)
        assert response.status_code == 404 and response.json()["error"]["message"], bad


def _fake_mic_wav(path: Path, seconds: float = 3.0, rate: int = 48000) -> Path:
    """A voiced-sounding tone (a 150 Hz buzz with a syllable-rate envelope) for Chromium's fake capture device."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t)
        value = sum(math.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 6)) * 0.25 * envelope
        frames += struct.pack("<h", int(max(-1.0, min(1.0, value)) * 32767))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return path


def _browser(tmp_path: Path, wav: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _stats(driver) -> dict:
    return driver.execute_script("return JSON.parse(JSON.stringify(window.demoStats));")


def _wait_turns(driver, turns: int, timeout: float = 45) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = _stats(driver)
        assert not stats["errors"], f"the page shows errors: {stats['errors']}"
        if stats["turns"] >= turns:
            return stats
        time.sleep(0.25)
    raise AssertionError(f"turn {turns} did not finish in {timeout} s: {_stats(driver)}")


@pytest.mark.engine
@pytest.mark.xdist_group("server")
def test_web_demo_talks_and_continues_by_audio_id(server: RunningServer, tmp_path: Path) -> None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path, _fake_mic_wav(tmp_path / "mic.wav"))
    try:
        driver.set_script_timeout(30)
        driver.get(server.base_url + "/")
        assert "GLM-4-Voice" in driver.title
        # The built-in default set has random weights, and the page says so.
        deadline = time.monotonic() + 10
        while driver.find_element(By.ID, "random-banner").get_attribute("hidden") is not None:
            assert time.monotonic() < deadline, "the random-weights banner did not appear"
            time.sleep(0.1)
        max_tokens = driver.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("78")
        driver.find_element(By.ID, "instructions").send_keys("Answer briefly.")

        # Turn 1: press to talk for ~1.5 s of the fake microphone.
        talk = driver.find_element(By.ID, "talk")
        ActionChains(driver).click_and_hold(talk).perform()
        time.sleep(1.5)
        ActionChains(driver).release(talk).perform()
        first = _wait_turns(driver, 1)
        assert first["samplesScheduled"] > 0, "no audio was scheduled for playback"
        assert first["lastAudioId"], first
        assert first["firstAudioMs"] is not None and first["firstAudioMs"] > 0
        assert first["rtf"] is not None and first["rtf"] > 0
        assistant = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")
        assert assistant and assistant[-1].text.strip() not in ("", "(no reply)"), "no transcript shown"
        assert "first audio" in driver.find_element(By.CSS_SELECTOR, ".msg.assistant .meta").text
        assert "speech" in driver.find_elements(By.CSS_SELECTOR, ".msg.user")[0].text

        # Turn 2 (text) continues the conversation by the first reply's audio id.
        driver.find_element(By.ID, "text-input").send_keys("And then?")
        driver.find_element(By.ID, "send").click()
        second = _wait_turns(driver, 2)
        assert second["lastRequestAssistantIds"] == [first["lastAudioId"]]
        assert second["lastAudioId"] and second["lastAudioId"] != first["lastAudioId"]
        assert second["samplesScheduled"] > first["samplesScheduled"]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2

        shot = tmp_path / "web-demo.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("GLM4VOICE_UPDATE_SCREENSHOT"):  # refresh the README's picture on demand only
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "web-demo.png")

        # A rejected request shows the API's error message (the OpenAI envelope), and the turn is not counted.
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("5")
        driver.find_element(By.ID, "text-input").send_keys("Too hot?")
        driver.find_element(By.ID, "send").click()
        deadline = time.monotonic() + 15
        while not _stats(driver)["errors"]:
            assert time.monotonic() < deadline, "the error was not shown"
            time.sleep(0.1)
        box = driver.find_element(By.ID, "error")
        assert box.is_displayed() and "400" in box.text and "temperature" in box.text, box.text
        assert _stats(driver)["turns"] == 2
    finally:
        driver.quit()


def _speech_mic_wav(path: Path) -> Path:
    """A spoken question, then 8 s of silence (Chromium loops the file: the question comes again while the model
    is still answering, which is a barge-in)."""
    import numpy as np

    from tests.speech import pcm16_bytes, silence, speech

    rate = 48000
    samples = np.concatenate(
        [silence(0.5, rate), speech("Could you tell me about the weather in Berlin today", rate), silence(8.0, rate)]
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16_bytes(samples))
    return path


@pytest.mark.engine
@pytest.mark.xdist_group("server")
def test_web_demo_hands_free_over_realtime(server: RunningServer, tmp_path: Path) -> None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path, _speech_mic_wav(tmp_path / "mic.wav"))
    try:
        driver.get(server.base_url + "/")
        max_tokens = driver.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("195")
        driver.find_element(By.ID, "handsfree").click()
        deadline = time.monotonic() + 150
        while True:
            stats = _stats(driver)
            hands = stats["handsFree"]
            assert not stats["errors"] and not hands["errors"], (stats["errors"], hands["errors"])
            # Not "a reply completed": on a slow machine (CI's were 3x slower some days) every reply can still be
            # generating when the looped clip speaks again, and is then cut (a completed reply over Realtime:
            # tests/api/test_realtime*.py). A barge-in on a reply that was speaking and a prompt that grew are this
            # page's part. Not "a truncate" either: when audio arrives slower than it plays, all of it was heard by
            # the barge-in and nothing is cut (CI, 2026-12-05: 13 replies cut by the server, none truncated). And on a
            # fast machine every reply's generation can end before the clip speaks again, so the barge-in stops its
            # playback and truncates what was not heard, with nothing left for the server to cut (CI simulation,
            # 2026-12-06: 13 replies complete at max_output_tokens, 13 interrupted and truncated). Either is a barge-in.
            prompted = [r["inputTokens"] for r in hands["responses"] if r["inputTokens"]]
            cut = [r for r in hands["responses"] if r["status"] == "cancelled" and r["reason"] == "turn_detected"]
            barged = hands["interrupted"] >= 1 and (cut or hands["truncated"] >= 1)
            if barged and len(prompted) >= 2 and hands["speechStarted"] >= 2:
                break
            assert time.monotonic() < deadline, f"no hands-free conversation with a barge-in: {stats}"
            time.sleep(0.5)
        assert hands["connected"] and hands["audioDeltas"] > 0 and stats["samplesScheduled"] > 0
        assert hands["truncated"] <= hands["interrupted"]
        # The answer after the barge-in was prompted with the earlier turns (its input grew).
        tokens = [r["inputTokens"] for r in hands["responses"] if r["inputTokens"]]
        assert tokens[-1] > tokens[0], hands["responses"]
        assert driver.find_element(By.ID, "handsfree").get_attribute("aria-pressed") == "true"
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")) >= 2
        driver.find_element(By.ID, "handsfree").click()  # stop: the session closes
        assert _stats(driver)["handsFree"]["connected"] is False
    finally:
        driver.quit()
