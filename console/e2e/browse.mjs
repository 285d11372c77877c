// Sign in (a wrong key first), find a logged call, open it, sign out. Input: CANDELA_CONSOLE_REQUEST_ID.
import { apiKey, gateway, scenario } from "./lib.mjs";

const requestId = process.env.CANDELA_CONSOLE_REQUEST_ID ?? "";

await scenario(async (page, steps, shot) => {
  await page.goto(gateway + "/");
  await page.getByLabel("API key").waitFor();
  await shot("01-sign-in");

  await page.getByLabel("API key").fill("cdl_not_a_real_key_at_all_0000000000000000");
  await page.getByRole("button", { name: "Sign in" }).click();
  steps.badKeyMessage = await page.getByRole("alert").innerText();
  await shot("02-bad-key");

  await page.getByLabel("API key").fill(apiKey);
  await page.getByRole("button", { name: "Sign in" }).click();
  const row = page.locator(`tr[data-request-id="${requestId}"]`);
  await row.waitFor({ timeout: 15000 });
  steps.rowText = await row.innerText();
  await shot("03-requests");

  const opening = Date.now();
  await row.click();
  const detail = page.getByRole("complementary", { name: "Request detail" });
  const conversation = detail.getByRole("list", { name: "Conversation" });
  await conversation.waitFor();
  steps.openMs = Date.now() - opening;
  steps.conversation = await conversation.locator("li").allInnerTexts();
  steps.conversationHtml = await conversation.innerHTML();
  steps.cost = await detail.locator("[data-cost]").getAttribute("data-cost");
  await shot("04-detail");
  await detail.getByText("Request body", { exact: true }).click();
  steps.requestBody = await detail.locator("details.raw pre").first().innerText();
  steps.detailHtml = await detail.locator("details.raw pre").first().innerHTML();
  // The page stays responsive with the huge line on screen: closing the detail takes effect at once.
  const closing = Date.now();
  await detail.getByRole("button", { name: "Close" }).click();
  await detail.waitFor({ state: "detached" });
  steps.closeMs = Date.now() - closing;

  steps.storage = await page.evaluate(() => ({
    local: Object.keys(window.localStorage).length,
    session: Object.keys(window.sessionStorage).length,
    cookies: document.cookie,
    url: window.location.href.split("#")[0],
  }));
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor();
  steps.keyFieldAfterSignOut = await page.getByLabel("API key").inputValue();
  await shot("05-signed-out");
});
