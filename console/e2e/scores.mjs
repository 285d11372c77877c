// Feedback and a score given in the request detail, seen in the table, then filtered by.
// Input: CANDELA_CONSOLE_USER (whose two calls the test made), CANDELA_CONSOLE_REQUEST_ID (the one scored).
import { apiKey, scenario, signIn } from "./lib.mjs";

const user = process.env.CANDELA_CONSOLE_USER;
const requestId = process.env.CANDELA_CONSOLE_REQUEST_ID;

await scenario(async (page, steps, shot) => {
  await signIn(page, apiKey, `#/requests?${new URLSearchParams({ user })}`);
  const row = page.locator(`tr[data-request-id="${requestId}"]`);
  await row.waitFor({ timeout: 15000 });
  const scoresColumn = (await page.locator("thead th").allInnerTexts()).indexOf("Scores");
  steps.scoresColumn = scoresColumn;
  steps.cellBefore = await row.locator("td").nth(scoresColumn).innerText();

  await row.click();
  const detail = page.getByRole("complementary", { name: "Request detail" });
  const panel = detail.getByRole("region", { name: "Scores and feedback" });
  await panel.waitFor();
  steps.panelBefore = await panel.innerText();
  await panel.getByRole("button", { name: "Thumbs up" }).click();
  await panel.getByText("Saved.").waitFor({ timeout: 20000 });
  steps.feedbackShown = await panel.getByText(/^Feedback:/).innerText();
  steps.thumbPressed = await panel.getByRole("button", { name: "Thumbs up" }).getAttribute("aria-pressed");

  await panel.getByPlaceholder("score name").fill("accuracy");
  await panel.getByPlaceholder("0.9 or true").fill("0.8");
  await panel.getByRole("button", { name: "Add score" }).click();
  await panel.locator('[data-score="accuracy"]').waitFor({ timeout: 20000 });
  steps.accuracyShown = await panel.locator('[data-score="accuracy"]').innerText();
  await shot("50-scored-detail");

  // The table row shows what was given in the detail, without a reload.
  await detail.getByRole("button", { name: "Close" }).click();
  await detail.waitFor({ state: "detached" });
  steps.cellAfter = await row.locator("td").nth(scoresColumn).innerText();
  await shot("51-scored-table");

  // Filters from the bar: positive feedback and an accuracy floor keep only the scored call.
  const filters = page.getByRole("form", { name: "Filters" });
  await filters.getByLabel("Feedback").selectOption("up");
  await filters.getByLabel("Scores (name=min..max, ...)").fill("accuracy=0.5..");
  await filters.getByRole("button", { name: "Apply" }).click();
  await page.waitForFunction(() => window.location.hash.includes("feedback=up"));
  await page.locator("tbody tr[data-request-id]").first().waitFor();
  // Let the filtered page replace the unfiltered one before counting.
  await page.waitForFunction(() => document.querySelectorAll("tbody tr[data-request-id]").length === 1, null, { timeout: 10000 });
  steps.filteredIds = await page.locator("tbody tr[data-request-id]").evaluateAll((rows) => rows.map((r) => r.dataset.requestId));
  steps.filteredUrl = page.url().split("#")[1];
  await shot("52-filtered-by-score");
});
