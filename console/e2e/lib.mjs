// What every browser scenario of tests/e2e/test_console.py shares: Debian's Chromium driven by
// playwright-core (no browser download), what the page did that a person would notice (dialogs, errors,
// CSP violations, the key in a URL), screenshots, and the result printed as JSON for the test.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

export const gateway = process.env.CANDELA_CONSOLE_GATEWAY;
export const apiKey = process.env.CANDELA_CONSOLE_KEY;
const screenshots = process.env.CANDELA_CONSOLE_SCREENSHOTS;

export async function scenario(run) {
  mkdirSync(screenshots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CANDELA_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
  const seen = { dialogs: [], pageErrors: [], cspViolations: [], requestsWithKey: [], steps: {} };
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.on("dialog", async (dialog) => {
      seen.dialogs.push(dialog.message());
      await dialog.dismiss();
    });
    page.on("pageerror", (error) => seen.pageErrors.push(String(error)));
    page.on("console", (message) => {
      if (message.text().includes("Content-Security-Policy")) seen.cspViolations.push(message.text());
    });
    page.on("request", (request) => {
      if (apiKey && request.url().includes(apiKey)) seen.requestsWithKey.push(request.url());
    });
    const shot = (name) => page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
    await run(page, seen.steps, shot);
  } catch (error) {
    seen.failure = String(error?.stack ?? error);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen));
}

export async function signIn(page, key = apiKey, hash = "") {
  await page.goto(`${gateway}/${hash}`);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}
