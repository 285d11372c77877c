// Prompts (versions, a diff, moving an environment, a render preview) and settings (limits, creating,
// using and revoking a key). Input: CANDELA_CONSOLE_PROMPT, a prompt of the key's organization with two
// versions.
import { apiKey, gateway, scenario, signIn } from "./lib.mjs";

const promptId = process.env.CANDELA_CONSOLE_PROMPT;

async function queryWith(key) {
  const response = await fetch(`${gateway}/v1/request/query`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ limit: 1 }),
  });
  return response.status;
}

await scenario(async (page, steps, shot) => {
  await signIn(page, apiKey, "#/prompts");
  await page.locator(`tr[data-prompt-id="${promptId}"] a`).click();
  await page.getByRole("table", { name: "Diff" }).waitFor();
  steps.versions = await page.locator("tr[data-version]").count();
  steps.diff = await page.getByRole("table", { name: "Diff" }).locator("tbody tr").allInnerTexts();
  await shot("50-prompt-diff");

  await page.getByLabel("Environment for version 2").fill("staging");
  await page.locator('tr[data-version="2"]').getByRole("button", { name: "Move" }).click();
  await page.locator('tr[data-version="2"] td', { hasText: "staging" }).waitFor();
  steps.version2 = await page.locator('tr[data-version="2"]').innerText();

  await page.getByRole("textbox", { name: "name", exact: true }).fill("<b>Ada</b>");
  await page.getByRole("button", { name: "Render" }).click();
  const rendered = page.getByRole("list", { name: "Rendered messages" });
  await rendered.waitFor();
  steps.rendered = await rendered.innerText();
  steps.renderedHtml = await rendered.innerHTML();
  await shot("51-prompt-render");

  await page.getByRole("link", { name: "Settings" }).click();
  const limits = page.getByRole("form", { name: "Organization limits" });
  await limits.getByLabel("Days logs are kept (empty: forever)").fill("30");
  await limits.getByRole("button", { name: "Save limits" }).click();
  steps.limitsSaved = await limits.getByRole("status").innerText();

  const form = page.getByRole("form", { name: "New API key" });
  await form.getByLabel("Name").fill("made in the console");
  await form.getByLabel("proxy").uncheck();
  await form.getByLabel("read").check();
  await form.getByRole("button", { name: "Create key" }).click();
  const secret = await page.locator("[data-secret]").innerText();
  steps.secretShown = secret.length > 20;
  steps.statusWithNewKey = await queryWith(secret);
  await shot("60-settings-new-key");
  await page.getByRole("button", { name: "Done" }).click();
  steps.secretStillShown = await page.locator("[data-secret]").count();

  const row = page.locator('tr[data-key-name="made in the console"]');
  steps.newKeyRow = await row.innerText();
  await row.getByRole("button", { name: "Revoke" }).click();
  await row.locator("td", { hasText: "revoked" }).waitFor();
  const revokedAt = Date.now();
  let status = await queryWith(secret);
  while (status === 200 && Date.now() - revokedAt < 15000) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    status = await queryWith(secret);
  }
  steps.statusAfterRevoke = status;
  steps.refusedAfterMs = Date.now() - revokedAt;
  await shot("61-settings-revoked");
});
