// The consent page in a real browser: Debian's Chromium, headless, driven by Playwright
// (playwright-core). Opens the gateway's authorize URL as a user would, checks the page
// rendered (its styles applied, the client named, no Content-Security-Policy violation),
// takes a screenshot, clicks Allow or Deny, and follows the browser through Entra (the
// stand-in) and the gateway's callback to the client's redirect URI, which is answered here.
// Prints one JSON report on stdout.
//
//   node consent_browser.mjs <chromium> <authorize-url> <redirect-uri> <approve|deny> <screenshot.png>
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

const [executablePath, authorizeUrl, redirectUri, decision, screenshot] = process.argv.slice(2);
const out = { console: [] };
// The client's redirect URI, answered by a loopback listener as a native client's would be (a
// route would not see it: the browser reaches it by the gateway's redirect).
const listener = createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<title>client</title>signed in');
});
await new Promise((ok) => listener.listen(Number(new URL(redirectUri).port), '127.0.0.1', ok));
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  // Framing is refused (clickjacking): the page in another origin's iframe does not load.
  // First, before the real page, whose CSRF cookie a second authorize would replace.
  const framer = await context.newPage();
  const framed = [];
  framer.on('console', (m) => framed.push(m.text()));
  await framer.route('http://framer.test/', (route) =>
    route.fulfill({
      status: 200,
      contentType: 'text/html',
      body: `<iframe id="f" src="${authorizeUrl}"></iframe>`,
    }),
  );
  await framer.goto('http://framer.test/');
  await framer.waitForTimeout(500);
  const frame = framer.frames().find((f) => f.url().startsWith(authorizeUrl.split('?')[0]));
  out.framed_has_form = frame ? (await frame.$('#approve').catch(() => null)) !== null : false;
  out.framed_console = framed;
  await framer.close();
  const page = await context.newPage();
  page.on('console', (m) => out.console.push(m.text()));
  out.navigations = [];
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) out.navigations.push(f.url().split('?')[0]);
  });
  page.on('requestfailed', (r) => out.console.push(`failed: ${r.url().split('?')[0]} ${r.failure()?.errorText}`));
  const first = await page.goto(authorizeUrl);
  out.status = first.status();
  out.title = await page.title();
  out.client = await page.textContent('#client-name');
  out.redirect_host = await page.textContent('#redirect-host');
  out.approve_background = await page.$eval('#approve', (b) => getComputedStyle(b).backgroundColor);
  out.main_width = await page.$eval('main', (m) => m.getBoundingClientRect().width);
  out.cookies_before = (await context.cookies()).map((c) => ({
    name: c.name,
    secure: c.secure,
    httpOnly: c.httpOnly,
    sameSite: c.sameSite,
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  await Promise.all([
    page.waitForURL(`${redirectUri}**`, { timeout: 15000 }),
    page.click(decision === 'approve' ? '#approve' : '#deny'),
  ]);
  out.landed = page.url();
  out.cookies_after = (await context.cookies()).map((c) => c.name).sort();
} catch (e) {
  out.error = String(e?.stack ?? e);
} finally {
  await browser.close();
  listener.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
