// bench/console: how long the console takes to show what a person opens it for, in Debian's Chromium,
// against a stack holding the query benchmark's data. Prints JSON: milliseconds per view and run.
// Input: CANDELA_CONSOLE_GATEWAY, CANDELA_CONSOLE_KEY, CANDELA_CONSOLE_SESSIONS (ids, comma-separated),
// CANDELA_CONSOLE_RUNS, and CANDELA_CONSOLE_SCREENSHOTS: a directory for a screenshot of each view after the
// runs (the README's), when set.
import { chromium } from "playwright-core";

const gateway = process.env.CANDELA_CONSOLE_GATEWAY;
const apiKey = process.env.CANDELA_CONSOLE_KEY;
const sessions = (process.env.CANDELA_CONSOLE_SESSIONS ?? "").split(",").filter(Boolean);
const runs = Number(process.env.CANDELA_CONSOLE_RUNS ?? "5");
const screenshots = process.env.CANDELA_CONSOLE_SCREENSHOTS;

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const result = { requests: [], dashboard: [], session: [], errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (error) => result.errors.push(String(error)));
  await page.goto(`${gateway}/`);
  await page.getByLabel("API key").fill(apiKey);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  // Each view is opened from another page, in the page (a reload would forget the key, by design), and
  // timed from the navigation until what it exists to show is drawn.
  const open = async (hash, ready) => {
    await page.evaluate(() => (window.location.hash = "#/users?range=1h"));
    await page.getByRole("heading", { name: "Users" }).waitFor();
    const began = Date.now();
    await page.evaluate((target) => (window.location.hash = target), hash);
    await ready();
    return Date.now() - began;
  };
  for (let run = 0; run < runs; run++) {
    result.requests.push(
      await open(`#/requests?run=${run}`, () =>
        page.waitForFunction(() => Number(document.querySelector("table.grid")?.dataset.loaded) >= 50 && document.querySelector("tbody tr[data-request-id]"), null, {
          timeout: 30000,
        }),
      ),
    );
    result.dashboard.push(
      await open(`#/dashboard?range=30d&run=${run}`, () => page.locator("figure.chart canvas").nth(5).waitFor({ timeout: 30000 })),
    );
    const session = sessions[run % sessions.length];
    result.session.push(
      await open(`#/session?id=${encodeURIComponent(session)}&run=${run}`, () => page.locator(".bar-row").first().waitFor({ timeout: 30000 })),
    );
  }
  if (screenshots) {
    const shot = async (hash, name, ready) => {
      await open(hash, ready);
      await page.waitForTimeout(300); // charts finish drawing
      await page.screenshot({ path: `${screenshots}/${name}.png` });
    };
    await shot("#/requests", "requests", () => page.locator("tbody tr[data-request-id]").first().waitFor());
    await shot("#/dashboard?range=30d", "dashboard", () => page.locator("figure.chart canvas").nth(5).waitFor());
    await shot("#/sessions?range=30d", "sessions", () => page.locator("tbody tr").first().waitFor());
    await shot(`#/session?id=${encodeURIComponent(sessions[0])}`, "session", () => page.locator(".bar-row").first().waitFor());
    await shot("#/users?range=30d", "users", () => page.locator("tbody tr").first().waitFor());
  }
} catch (error) {
  result.errors.push(String(error?.stack ?? error));
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
