// A long list: only the rows near the viewport are in the page, the keyboard walks past what was first
// drawn, and scrolling to the end pages in every request by itself.
// Input: CANDELA_CONSOLE_USER (whose calls the test made), CANDELA_CONSOLE_TOTAL (how many).
import { apiKey, scenario, signIn } from "./lib.mjs";

const user = process.env.CANDELA_CONSOLE_USER;
const total = Number(process.env.CANDELA_CONSOLE_TOTAL);

await scenario(async (page, steps, shot) => {
  await signIn(page, apiKey, `#/requests?${new URLSearchParams({ user })}`);
  const rows = page.locator("tbody tr[data-request-id]");
  await rows.first().waitFor();
  const loaded = async () => Number(await page.locator("table.grid").getAttribute("data-loaded"));
  const focused = () => page.evaluate(() => Number(document.activeElement?.getAttribute("data-index") ?? -1));
  steps.firstLoaded = await loaded();
  steps.firstRendered = await rows.count();

  await rows.first().focus();
  const walk = async (key, times) => {
    for (let step = 0; step < times; step++) {
      const from = await focused();
      await page.keyboard.press(key);
      const to = from + (key === "j" ? 1 : -1);
      await page.waitForFunction((index) => document.activeElement?.getAttribute("data-index") === String(index), to);
    }
  };
  await walk("j", 60);
  steps.afterDown = await focused();
  steps.focusedInView = await page.evaluate(() => {
    const box = document.activeElement.getBoundingClientRect();
    return box.top >= 0 && box.bottom <= window.innerHeight;
  });
  await walk("k", 5);
  steps.afterUp = await focused();
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Close" }).waitFor();
  steps.openedId = new URLSearchParams(page.url().split("?")[1]).get("request");
  await page.getByRole("button", { name: "Close" }).click();

  for (let tries = 0; tries < 60 && (await loaded()) < total; tries++) {
    await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
    await page.waitForTimeout(200);
  }
  await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  await page.waitForTimeout(200);
  steps.allLoaded = await loaded();
  steps.renderedAtEnd = await rows.count();
  steps.lastRendered = await rows.evaluateAll((shown) => Math.max(...shown.map((row) => Number(row.dataset.index))));
  await shot("70-long-list-end");
});
