// Export of the listed requests: the filter from a shared link, then Export CSV and Export JSONL, each
// caught as the browser's download. Input: CANDELA_CONSOLE_USER (whose calls the test made).
import { readFileSync } from "node:fs";
import { apiKey, scenario, signIn } from "./lib.mjs";

const user = process.env.CANDELA_CONSOLE_USER;

await scenario(async (page, steps, shot) => {
  await signIn(page, apiKey, `#/requests?${new URLSearchParams({ user })}`);
  await page.locator("tbody tr[data-request-id]").first().waitFor();
  steps.listedIds = await page.locator("tbody tr[data-request-id]").evaluateAll((rows) => rows.map((row) => row.dataset.requestId));
  steps.downloads = {};
  for (const label of ["CSV", "JSONL"]) {
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: `Export ${label}` }).click(),
    ]);
    const result = page.locator("[data-export-result]");
    await result.waitFor();
    steps.downloads[label] = {
      name: download.suggestedFilename(),
      text: readFileSync(await download.path(), "utf-8"),
      result: await result.innerText(),
    };
  }
  await shot("50-export");
});
