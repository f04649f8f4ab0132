// Opens the live Swagger UI in headless Chromium, authorises with an API key, runs listUsers
// and checks that the page shows the 200. Usage: node browser-test.mjs BASE_URL API_KEY
import { chromium } from "playwright-core";

const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error("usage: node browser-test.mjs BASE_URL API_KEY");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/docs`);

  // Users first: the main resource leads the page.
  const firstTag = (await page.locator(".opblock-tag").first().innerText()).trim();
  if (!firstTag.startsWith("Users")) {
    throw new Error(`the first tag shown is ${firstTag}, expected Users`);
  }

  await page.getByRole("button", { name: "Authorize" }).first().click();
  // The dialog offers both schemes, each a bearer token: the API key and an OAuth 2.0 JWT
  // (with no identity provider's URLs configured, there are no flows to run).
  const dialog = page.locator(".dialog-ux");
  const apiKey = dialog.locator(".auth-container").filter({ hasText: "ApiKey" });
  await dialog.locator(".auth-container").filter({ hasText: "OAuth2" }).getByText("JWT").waitFor();
  await apiKey.locator("input").fill(key);
  await apiKey.getByRole("button", { name: "Apply credentials" }).click();
  await dialog.locator("button.btn-done").first().click();

  const operation = page.locator("#operations-Users-listUsers");
  await operation.locator(".opblock-summary").click();
  // Each error status shows its own example: the 400 names a bad parameter of this operation.
  const badRequest = operation.locator(".responses-table tr.response[data-code='400']");
  const example = await badRequest.innerText();
  if (!example.includes("Bad Request") || !example.includes("must be")) {
    throw new Error(`listUsers' 400 shows no example of its own:\n${example}`);
  }
  await operation.getByRole("button", { name: "Try it out" }).click();
  await operation.getByRole("button", { name: "Execute" }).click();

  const status = operation.locator(".live-responses-table tr.response .response-col_status").first();
  await status.waitFor({ timeout: 15000 });
  const shown = (await status.innerText()).trim();
  if (!shown.startsWith("200")) {
    throw new Error(`Swagger UI shows ${shown} for listUsers, expected 200`);
  }
  console.log(`browser test: Swagger UI authorised with an API key and listUsers returned ${shown}`);
} finally {
  await browser.close();
}
