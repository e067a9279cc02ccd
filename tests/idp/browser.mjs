// Drives Debian's headless Chromium (playwright-core, no browser download) through the web
// front: sign in at the test IdP, open the terminal, type, read the rendered terminal.
// env: GATEWAY_URL, LOGIN_USER, SCREENSHOT (path), CHROMIUM (default /usr/bin/chromium)
// Or, with OPEN_URL (an `ssh host link [ID]` URL): open it, confirm, and land on the terminal;
// then wait for EXPECT on the terminal, type TYPE, and wait for EXPECT_AFTER; prints SESSIONS:
// the header's session list too.
// Prints "TERMINAL: <text of the terminal rows>" and exits 0 when the page worked.
import { chromium } from 'playwright-core';

const url = process.env.GATEWAY_URL;
const user = process.env.LOGIN_USER || 'alice';
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 600 } });
  const rows = () => document.querySelector('.xterm-rows').innerText;
  if (process.env.OPEN_URL) {
    await page.goto(process.env.OPEN_URL);
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/auth/')), page.click('#continue')]);
    await page.waitForSelector('.xterm-rows', { timeout: 15000 }).catch(async (e) => {
      console.log(`PAGE at ${page.url()}: ${(await page.content()).slice(0, 2000)}`);
      throw e;
    });
    await page.waitForFunction((want) => document.querySelector('.xterm-rows').innerText.includes(want), process.env.EXPECT, { timeout: 15000 });
    await page.click('#terminal');
    await page.keyboard.type(process.env.TYPE);
    await page.waitForFunction((want) => document.querySelector('.xterm-rows').innerText.includes(want), process.env.EXPECT_AFTER, { timeout: 15000 });
    console.log(`TERMINAL: ${(await page.evaluate(rows)).replace(/\s+/g, ' ')}`);
    // The header's session list: ids, the open one starred.
    const listed = await page.evaluate(() => [...document.querySelectorAll('#sessions a')]
      .map((a) => a.textContent + (a.className === 'current' ? '*' : '')).join(' '));
    console.log(`SESSIONS: ${listed}`);
    process.exit(0);
  }
  await page.goto(`${url}/`);
  await page.click('#signin');
  await page.waitForSelector('#login');
  await page.fill('#login', user);
  await Promise.all([page.waitForURL(`${url}/`), page.click('#submit')]);
  await page.waitForSelector('.xterm-rows');
  await page.waitForFunction(() => window.term && document.getElementById('status').textContent === '');
  // Wait for the shell's prompt before typing.
  await page.waitForFunction(() => document.querySelector('.xterm-rows').innerText.trim().length > 0, null, { timeout: 15000 });
  await page.click('#terminal');
  await page.keyboard.type('echo ID=$HERMES_DASHBOARD_USER_ID\n');
  await page.waitForFunction(() => /ID=[a-z]/.test(document.querySelector('.xterm-rows').innerText), null, { timeout: 15000 });
  const text = await page.evaluate(() => document.querySelector('.xterm-rows').innerText);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  console.log(`TERMINAL: ${text.replace(/\s+/g, ' ')}`);
} finally {
  await browser.close();
}
