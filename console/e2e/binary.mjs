// A request whose answer is binary (speech audio): the detail shows its size and content type, never the
// bytes as text, and Download saves exactly those bytes. Input: CANDELA_CONSOLE_REQUEST_ID.
import { readFileSync } from "node:fs";
import { apiKey, scenario, signIn } from "./lib.mjs";

const requestId = process.env.CANDELA_CONSOLE_REQUEST_ID;

await scenario(async (page, steps, shot) => {
  await signIn(page, apiKey);
  const row = page.locator(`tr[data-request-id="${requestId}"]`);
  await row.waitFor({ timeout: 15000 });
  await row.click();
  const detail = page.getByRole("complementary", { name: "Request detail" });
  const binary = detail.locator("p.binary");
  await binary.waitFor();
  steps.binaryLine = await binary.innerText();
  steps.detailText = await detail.innerText();
  await binary.scrollIntoViewIfNeeded();
  await shot("60-binary-detail");
  const [download] = await Promise.all([page.waitForEvent("download"), binary.getByRole("button", { name: "Download" }).click()]);
  steps.download = { name: download.suggestedFilename(), base64: readFileSync(await download.path()).toString("base64") };
});
