import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { afterEach, describe, expect, it, vi } from 'vitest';
import RunDetail from './RunDetail.svelte';

// uPlot needs a real browser (matchMedia, canvas); the chart is covered by the browser tests.
vi.mock('../components/Chart.svelte', () => ({ default: () => {} }));

// A runaway run of 450 calls, more than one page of the timeline.
const TOTAL = 450;
const run = {
  id: 9,
  agent: 'bot',
  run_id: 'loop',
  started_at: '2030-01-01T00:00:00Z',
  last_event_at: '2030-01-01T00:07:29Z',
  calls: TOTAL,
  cost_nanos: TOTAL * 1e6,
  cost_usd: '0.45',
  totals: { events: TOTAL, refused: 3, input_tokens: TOTAL * 10, output_tokens: TOTAL * 5, cost_nanos: TOTAL * 1e6 },
};

function call(n: number) {
  const at = new Date(Date.UTC(2030, 0, 1) + n * 1000).toISOString();
  return {
    id: `e${n}`,
    agent: 'bot',
    run: 9,
    provider: 'openai',
    model: 'gpt-4o',
    operation: 'chat',
    status: 'ok',
    refusal_reason: null,
    error: null,
    started_at: at,
    duration_ms: 10,
    cost_nanos: 1e6,
    cost_usd: '0.001',
    reserved_nanos: 2e6,
    usage: { input_tokens: 10, output_tokens: 5, cache_read_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 },
    prompt: null,
    // The run's last call was a priority-tier call that searched the web three times.
    details:
      n === TOTAL - 1
        ? { price_tier: 'priority', web_searches: 3, file_searches: 0, input_characters: 0, audio_seconds: 0 }
        : {},
    ...billedByTheUnit[TOTAL - 1 - n],
  };
}

// The two calls before it were billed per character of text and per second of audio.
const billedByTheUnit: Record<number, object> = {
  1: {
    operation: 'speech',
    model: 'tts-1',
    usage: { input_tokens: 0, output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 },
    details: { input_characters: 1234, audio_seconds: 0, web_searches: 0 },
  },
  2: {
    operation: 'transcription',
    model: 'whisper-1',
    usage: { input_tokens: 0, output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 },
    details: { input_characters: 0, audio_seconds: 37, web_searches: 0 },
  },
};

function backend() {
  const urls: string[] = [];
  vi.stubGlobal(
    'fetch',
    vi.fn(async (url: string) => {
      urls.push(url);
      if (url === '/v1/runs/9') return new Response(JSON.stringify(run));
      const page = new URL(url, 'http://x').searchParams;
      if (url.startsWith('/v1/runs/9/events') && page.get('order') === 'newest') {
        const offset = Number(page.get('offset') ?? 0);
        const limit = Number(page.get('limit'));
        const newest = Array.from({ length: TOTAL }, (_, i) => call(TOTAL - 1 - i));
        return new Response(JSON.stringify(newest.slice(offset, offset + limit)));
      }
      return new Response('{}', { status: 404 });
    }),
  );
  return urls;
}

afterEach(() => vi.unstubAllGlobals());

describe('Run detail page', () => {
  it("shows the whole run's totals and its newest calls, and loads older ones on request", async () => {
    const urls = backend();
    render(RunDetail, { props: { params: { id: '9' } } });
    expect(await screen.findByText('Showing the latest 200 of 450 calls.', { exact: false })).toBeTruthy();
    const totals = screen.getByRole('region', { name: 'Run totals' });
    expect(within(totals).getByText('6,750 / 3')).toBeTruthy();
    const timeline = screen.getByRole('list', { name: 'Calls in this run, in order' });
    const items = within(timeline).getAllByRole('listitem');
    expect(items).toHaveLength(200);
    // The last call of the run is shown, numbered as the run's 450th.
    expect(items[199].textContent).toContain('#450 chat');
    expect(items[0].textContent).toContain('#251 chat');

    await fireEvent.click(screen.getByRole('button', { name: 'Load 200 older calls' }));
    await waitFor(() => expect(within(timeline).getAllByRole('listitem')).toHaveLength(400));
    expect(urls.some((u) => u.includes('offset=200'))).toBe(true);
    await fireEvent.click(screen.getByRole('button', { name: 'Load 50 older calls' }));
    await waitFor(() => expect(within(timeline).getAllByRole('listitem')).toHaveLength(450));
    expect(within(timeline).getAllByRole('listitem')[0].textContent).toContain('#1 chat');
    expect(screen.queryByTestId('timeline-count')).toBeNull();
  }, 30_000); // renders 450 calls in three loads: seconds on a loaded 2-core machine

  it("shows a call's price tier and web searches, and nothing extra for a standard call", async () => {
    backend();
    render(RunDetail, { props: { params: { id: '9' } } });
    expect(await screen.findByText('Showing the latest 200 of 450 calls.', { exact: false })).toBeTruthy();
    const timeline = screen.getByRole('list', { name: 'Calls in this run, in order' });
    const items = within(timeline).getAllByRole('listitem');
    const last = items[items.length - 1];
    expect(last.textContent).toContain('#450 chat');
    expect(within(last).getByText('Price tier').nextElementSibling?.textContent).toBe('priority');
    expect(within(last).getByText('Web searches').nextElementSibling?.textContent).toBe('3');
    expect(within(last).queryByText('File searches')).toBeNull();
    expect(within(items[0]).queryByText('Price tier')).toBeNull();
    expect(within(items[0]).queryByText('Web searches')).toBeNull();
  });

  it('shows the characters and seconds of audio a call was billed for, only where there were some', async () => {
    backend();
    render(RunDetail, { props: { params: { id: '9' } } });
    expect(await screen.findByText('Showing the latest 200 of 450 calls.', { exact: false })).toBeTruthy();
    const timeline = screen.getByRole('list', { name: 'Calls in this run, in order' });
    const [transcription, speech, chat] = within(timeline).getAllByRole('listitem').slice(-3);
    expect(speech.textContent).toContain('#449 speech');
    expect(within(speech).getByText('Characters billed').nextElementSibling?.textContent).toBe('1,234');
    expect(within(speech).queryByText('Audio billed')).toBeNull();
    expect(transcription.textContent).toContain('#448 transcription');
    expect(within(transcription).getByText('Audio billed').nextElementSibling?.textContent).toBe('37 s');
    expect(within(transcription).queryByText('Characters billed')).toBeNull();
    // A chat call reports both as zero: neither is shown.
    expect(within(chat).queryByText('Characters billed')).toBeNull();
    expect(within(chat).queryByText('Audio billed')).toBeNull();
  });
});
