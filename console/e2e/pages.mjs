// Filters in the URL, live mode, the dashboard, a session's waterfall and the users page.
// Input: CANDELA_CONSOLE_USER (whose calls the test made), CANDELA_CONSOLE_SESSION.
import { apiKey, gateway, scenario, signIn } from "./lib.mjs";

const user = process.env.CANDELA_CONSOLE_USER;
const session = process.env.CANDELA_CONSOLE_SESSION;

await scenario(async (page, steps, shot) => {
  // A property named in another case than it was sent, and a cost range, from a shared link.
  const view = new URLSearchParams({ user, "prop.FEATURE": "console", cost_min: "0.0000001" });
  await signIn(page, apiKey, `#/requests?${view}`);
  await page.locator("tbody tr[data-request-id]").first().waitFor();
  steps.filteredRows = await page.locator("tbody tr[data-request-id]").count();
  await shot("10-filtered");

  // Live: a call made now shows up without a reload.
  await page.getByLabel("Live").check();
  const reply = await fetch(`${gateway}/v1/chat/completions`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Authorization: "Bearer sk-local",
      "Candela-Auth": `Bearer ${apiKey}`,
      "Candela-User-Id": user,
      "Candela-Property-Feature": "console",
    },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "live" }] }),
  });
  const liveId = reply.headers.get("candela-id");
  await reply.text();
  const answered = Date.now();
  await page.locator(`tr[data-request-id="${liveId}"]`).waitFor({ timeout: 10000 });
  steps.liveMs = Date.now() - answered;
  steps.liveRows = await page.locator("tbody tr[data-request-id]").count();
  await shot("11-live");

  await page.getByRole("link", { name: "Dashboard" }).click();
  const totals = page.getByRole("definition").first();
  await totals.waitFor();
  await page.locator("figure.chart canvas").first().waitFor();
  const box = page.locator("dl.totals");
  steps.dashboard = {
    start: await box.getAttribute("data-start"),
    end: await box.getAttribute("data-end"),
    requests: await page.locator('[data-total="Requests"] dd').innerText(),
    cost: await page.locator('[data-total="Cost"] dd').getAttribute("title"),
    charts: await page.locator("figure.chart canvas").count(),
  };
  await shot("20-dashboard");

  // In-page navigation (a reload would forget the key, by design).
  await page.evaluate((hash) => (window.location.hash = hash), `#/session?id=${encodeURIComponent(session)}`);
  await page.locator(".bar-row").first().waitFor();
  steps.sessionBars = await page.locator(".bar-row").allInnerTexts();
  await shot("30-session");

  await page.getByRole("link", { name: "Users" }).click();
  const userRow = page.locator(`tr[data-user-id="${user}"]`);
  await userRow.waitFor();
  steps.userRow = await userRow.innerText();
  await userRow.getByRole("link").click();
  await page.locator("tbody tr[data-request-id]").first().waitFor();
  steps.userRequestsUrl = page.url().split("#")[1];
  await shot("40-users");
});
