// Requests made with the real openai and anthropic SDKs (a stream, a tool call and its result) read as a
// conversation in the detail, with their tokens and cost. Input: CANDELA_CONSOLE_REQUEST_IDS (comma-separated).
import { apiKey, scenario, signIn } from "./lib.mjs";

const requestIds = process.env.CANDELA_CONSOLE_REQUEST_IDS.split(",");

await scenario(async (page, steps, shot) => {
  await signIn(page, apiKey);
  steps.details = [];
  for (const [index, requestId] of requestIds.entries()) {
    await page.evaluate((hash) => (window.location.hash = hash), `#/requests?request=${requestId}`);
    const detail = page.getByRole("complementary", { name: "Request detail" });
    const conversation = detail.getByRole("list", { name: "Conversation" });
    await conversation.waitFor();
    steps.details.push({
      requestId,
      turns: await conversation.locator(":scope > li").allInnerTexts(),
      usage: await detail.getByRole("table", { name: "Tokens and cost" }).innerText(),
      cost: await detail.locator("[data-cost]").getAttribute("data-cost"),
    });
    await shot(`8${index}-sdk-detail`);
    await detail.getByRole("button", { name: "Close" }).click();
    await detail.waitFor({ state: "detached" });
  }
});
