// Drives the console in Debian's Chromium (playwright-core, no browser download) through one scenario of
// tests/e2e/test_console.py and prints what a person would have seen, as JSON, for the test to assert on.
// Usage: node browse.mjs <scenario> ; input in CANDELA_CONSOLE_* variables; screenshots go to
// CANDELA_CONSOLE_SCREENSHOTS.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const gateway = process.env.CANDELA_CONSOLE_GATEWAY;
const apiKey = process.env.CANDELA_CONSOLE_KEY;
const screenshots = process.env.CANDELA_CONSOLE_SCREENSHOTS;
const requestId = process.env.CANDELA_CONSOLE_REQUEST_ID ?? "";
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
  const shot = async (name) => page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });

  await page.goto(gateway + "/");
  await page.getByLabel("API key").waitFor();
  await shot("01-sign-in");

  await page.getByLabel("API key").fill("cdl_not_a_real_key_at_all_0000000000000000");
  await page.getByRole("button", { name: "Sign in" }).click();
  seen.steps.badKeyMessage = await page.getByRole("alert").innerText();
  await shot("02-bad-key");

  await page.getByLabel("API key").fill(apiKey);
  await page.getByRole("button", { name: "Sign in" }).click();
  const row = page.locator(`tr[data-request-id="${requestId}"]`);
  await row.waitFor({ timeout: 15000 });
  seen.steps.rowText = await row.innerText();
  seen.steps.rowCount = await page.locator("tbody tr").count();
  await shot("03-requests");

  await row.click();
  const detail = page.getByRole("complementary", { name: "Request detail" });
  await detail.getByText("Request body").waitFor();
  await detail.locator("pre.body").first().waitFor();
  seen.steps.requestBody = await detail.locator("pre.body").first().innerText();
  seen.steps.detailHtml = await detail.locator("pre.body").first().innerHTML();
  await shot("04-detail");

  seen.steps.storage = await page.evaluate(() => ({
    local: Object.keys(window.localStorage).length,
    session: Object.keys(window.sessionStorage).length,
    cookies: document.cookie,
    url: window.location.href,
  }));
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor();
  seen.steps.keyFieldAfterSignOut = await page.getByLabel("API key").inputValue();
  await shot("05-signed-out");
} catch (error) {
  seen.failure = String(error?.stack ?? error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen));
