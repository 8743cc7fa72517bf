// Drives Debian's chromium (headless, through playwright-core) through the
// callrec web console as each role, like a person would: log in by the
// labelled fields and the keyboard, search a number, open the recording,
// play it to its end, see "verified", download an export, be refused what
// the role does not allow, and find every action in the access log.
// Started by tests/console_browser.rs, which reads the settings below from
// the environment and checks this script's exit code and output.
"use strict";
const path = require("path");
const { chromium } = require("playwright-core");

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`environment variable ${k} is not set`);
  return v;
};
const URL = env("CONSOLE_URL");
const OUT = env("CONSOLE_OUT_DIR");
const NUMBER = env("CONSOLE_NUMBER");
const SECONDS = Number(env("CONSOLE_EXPECT_SECONDS"));
const USERS = {
  viewer: [env("CONSOLE_VIEWER"), env("CONSOLE_VIEWER_PASSWORD")],
  auditor: [env("CONSOLE_AUDITOR"), env("CONSOLE_AUDITOR_PASSWORD")],
  admin: [env("CONSOLE_ADMIN"), env("CONSOLE_ADMIN_PASSWORD")],
};

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok: ${what}`);
}

async function login(page, role) {
  const [name, password] = USERS[role];
  await page.goto(`${URL}/login`);
  await page.getByLabel("User name").fill(name);
  await page.getByLabel("Password").fill(password);
  await page.getByLabel("Password").press("Enter");
  await page.waitForURL(`${URL}/recordings`);
  check((await page.locator("header").innerText()).includes(`${name} (${role})`), `${role} logged in`);
}

async function searchAndOpen(page, role, shot) {
  await page.getByLabel("Number (any spelling)").fill(NUMBER);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/recordings\?number=/);
  const link = page.locator("table.results a[href^='/recordings/']").first();
  await link.waitFor();
  const id = (await link.innerText()).trim();
  check(id.length > 0, `${role} finds the recording of ${NUMBER}: ${id}`);
  if (shot) await page.screenshot({ path: path.join(OUT, "console-search.png"), fullPage: true });
  await link.focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(`${URL}/recordings/${id}`);
  const verification = await page.locator("#verification").innerText();
  check(verification.startsWith("verified"), `${role} sees "verified" (${verification})`);
  return id;
}

// The Content-Range of every partial audio response a page got.
const ranges = new WeakMap();
async function newPage(context) {
  const page = await context.newPage();
  const seen = [];
  ranges.set(page, seen);
  page.on("response", (r) => {
    if (r.url().includes("/audio") && r.status() === 206) seen.push(r.headers()["content-range"]);
  });
  return page;
}

async function playToEnd(page, role) {
  const ranged = ranges.get(page);
  const result = await page.evaluate(async () => {
    const a = document.querySelector("audio");
    a.muted = true;
    // Nothing is fetched before the person presses play (preload="none").
    const loading = new Promise((ok, fail) => { a.onloadedmetadata = ok; a.onerror = () => fail(new Error("audio error")); });
    await a.play();
    a.pause();
    if (a.readyState < 1) await loading;
    // Seek into the middle first: the server must answer the range request.
    a.currentTime = a.duration / 2;
    await new Promise((ok) => { a.onseeked = ok; });
    const ended = new Promise((ok) => { a.onended = ok; });
    await a.play();
    await Promise.race([ended, new Promise((_, fail) => setTimeout(() => fail(new Error("not played to the end in 60 s")), 60000))]);
    return { duration: a.duration, currentTime: a.currentTime, ended: a.ended };
  });
  check(Math.abs(result.duration - SECONDS) < 0.6, `${role}: the player's duration ${result.duration.toFixed(2)} s matches the recording's ${SECONDS} s`);
  check(result.ended && result.currentTime >= result.duration - 0.05, `${role}: played to the end (${result.currentTime.toFixed(2)} s)`);
  check(ranged.length > 0, `${role}: the player was served HTTP ranges (${ranged[0]})`);
}

async function refused(page, role, pathname) {
  const r = await page.goto(`${URL}${pathname}`);
  check(r.status() === 403, `${role} is refused ${pathname} (${r.status()})`);
}

(async () => {
  const context = await chromium.launchPersistentContext(path.join(OUT, "profile"), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  try {
    // Viewer: search and listen; no export, access log or operations.
    let page = await newPage(context);
    await login(page, "viewer");
    const id = await searchAndOpen(page, "viewer", true);
    await page.screenshot({ path: path.join(OUT, "console-recording.png"), fullPage: true });
    await playToEnd(page, "viewer");
    check((await page.locator("#export").count()) === 0, "viewer is offered no export");
    await refused(page, "viewer", `/recordings/${id}/export`);
    await refused(page, "viewer", "/access-log");
    await refused(page, "viewer", "/operations");
    await page.goto(`${URL}/recordings`);
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(`${URL}/login`);
    const back = await page.goto(`${URL}/recordings/${id}`);
    check(back.url() === `${URL}/login`, "after logging out the recording page leads to the login");
    await page.close();

    // Auditor: also the export (verified by the Rust test with openssl) and the access log.
    page = await newPage(context);
    await login(page, "auditor");
    await searchAndOpen(page, "auditor", false);
    // Opening the recording is no playback: the access log says so only once
    // the auditor has pressed play.
    const other = await context.newPage();
    await other.goto(`${URL}/access-log`);
    const before = await other.locator("main").innerText();
    check(!before.split("\n").some((l) => l.includes(`console:${USERS.auditor[0]}`) && l.includes("playback")), "opening a recording writes no playback row");
    await other.close();
    await playToEnd(page, "auditor");
    const [download] = await Promise.all([page.waitForEvent("download"), page.locator("#export").click()]);
    const zip = path.join(OUT, "export.zip");
    await download.saveAs(zip);
    check(download.suggestedFilename() === `${id}.zip`, `auditor downloads the export ${download.suggestedFilename()}`);
    console.log(`export: ${zip}`);
    await refused(page, "auditor", "/operations");
    await page.goto(`${URL}/access-log`);
    const log = await page.locator("main").innerText();
    for (const [who, what] of [
      [USERS.viewer[0], "search"], [USERS.viewer[0], "playback"],
      [USERS.auditor[0], "search"], [USERS.auditor[0], "playback"], [USERS.auditor[0], "export"],
    ]) {
      check(log.split("\n").some((l) => l.includes(`console:${who}`) && l.includes(what) && (what === "search" || l.includes(id))), `access log shows ${who} ${what}`);
    }
    await page.close();

    // Admin: the operations view with the instance certificate.
    page = await newPage(context);
    await login(page, "admin");
    await page.getByRole("link", { name: "Operations" }).click();
    await page.waitForURL(`${URL}/operations`);
    const ops = await page.locator("main").innerText();
    check(ops.includes("BEGIN CERTIFICATE") && /([0-9A-F]{2}:){31}[0-9A-F]{2}/.test(ops), "admin sees the certificate and its fingerprint");
    check(ops.includes("Upload queue") && ops.includes("Recording failures"), "admin sees uploads and failures");
    // No OneDrive target here: the section says so (the sign-in itself is tested in tests/console_onedrive.rs).
    check(ops.includes("OneDrive sign-in") && ops.includes("No OneDrive target with delegated sign-in"), "admin sees the OneDrive sign-in section");
    await page.close();
    console.log("ALL OK");
  } finally {
    await context.close();
  }
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
