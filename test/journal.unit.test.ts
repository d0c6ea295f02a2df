/** The embedded broker's journal: records round-trip exactly, a torn tail is cut, waits resolve in order. */
import { appendFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Journal, decodeRecords, encodeRecord, type JournalRecord } from '../embedded/journal.ts';

const dirs: string[] = [];
const dir = () => {
  const d = mkdtempSync(join(tmpdir(), 'herald-journal-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const rec = (offset: number, over: Partial<JournalRecord> = {}): JournalRecord => ({ offset: BigInt(offset), timestamp: 1_700_000_000_000 + offset, key: Buffer.from(`k${offset}`), value: Buffer.from(`v${offset}`), headers: {}, ...over });

describe('journal', () => {
  it('round-trips offsets, timestamps, keys, null values, binary values and headers', () => {
    const records = [rec(0), rec(1, { key: null, value: null }), rec(2, { value: Buffer.from([0, 255, 7]), headers: { 'herald.error.code': 'HRL_TOMBSTONE' } })];
    const { records: back, valid } = decodeRecords(Buffer.concat(records.map(encodeRecord)));
    expect(back).toEqual(records);
    expect(valid).toBe(Buffer.concat(records.map(encodeRecord)).length);
  });

  it('keeps its identity and records across reopen, skips records it has, and cuts a torn last entry', () => {
    const d = dir();
    const j = Journal.open(d);
    j.append('herald.events.v1', 2, [rec(0), rec(1)]);
    j.append('herald.events.v1', 2, [rec(1), rec(2)]); // 1 again (a refetch): not written twice
    j.close();
    const file = join(d, encodeURIComponent('herald.events.v1'), '2.log');
    const intact = statSync(file).size;
    appendFileSync(file, encodeRecord(rec(3)).subarray(0, 10)); // a crash mid-write
    const again = Journal.open(d);
    expect(again.id).toBe(j.id);
    const parts = [...again.read()];
    expect(parts.map((p) => [p.topic, p.partition, [...p.records].map((r) => Number(r.offset))])).toEqual([['herald.events.v1', 2, [0, 1, 2]]]);
    expect(statSync(file).size).toBe(intact);
    expect(again.highWater('herald.events.v1', 2)).toBe(3n);
    expect(again.highWater('herald.events.v1', 0)).toBe(0n);
  });

  it('reads a large partition back record by record, with the sizes it had when written', () => {
    const d = dir();
    const j = Journal.open(d);
    for (let i = 0; i < 1000; i += 100) j.append('t', 0, Array.from({ length: 100 }, (_, k) => rec(i + k, { headers: { h: `x${i + k}` } })));
    j.close();
    const again = Journal.open(d);
    const [part] = [...again.read()];
    // Decoded as iterated, not held as one array of every record the partition ever had.
    expect(Array.isArray(part!.records)).toBe(false);
    const back = [...part!.records];
    expect(back.map((r) => Number(r.offset))).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(back[999]).toEqual(rec(999, { headers: { h: 'x999' } }));
    expect(again.highWater('t', 0)).toBe(1000n);
    // What a reader at some offset still has to read is estimated from the file, whole or not.
    expect(again.bytesAfter('t', 0, 0n)).toBe(statSync(join(d, 't', '0.log')).size);
    expect(again.bytesAfter('t', 0, 1000n)).toBe(0);
    expect(again.bytesAfter('t', 0, 500n)).toBeGreaterThan(0);
    expect(again.bytesAfter('t', 0, 500n)).toBeLessThan(again.bytesAfter('t', 0, 200n));
  });

  it('resolves a wait once the record at that offset is journaled, not before', async () => {
    const j = Journal.open(dir());
    let done = false;
    const wait = j.waitFor('t', 0, 1n).then(() => (done = true));
    j.append('t', 0, [rec(0)]);
    await new Promise((r) => setTimeout(r, 10));
    expect(done).toBe(false);
    j.append('t', 0, [rec(1)]);
    await wait;
    expect(done).toBe(true);
    await j.waitFor('t', 0, 0n); // already there: resolves at once
  });

  it('saves offset snapshots atomically and reads back the last one', () => {
    const j = Journal.open(dir());
    expect(j.loadOffsets()).toEqual({});
    j.saveOffsets({ 'herald.ingest': { 'herald.events.v1': { '0': '12' } } });
    j.saveOffsets({ 'herald.ingest': { 'herald.events.v1': { '0': '40' } } });
    expect(j.loadOffsets()).toEqual({ 'herald.ingest': { 'herald.events.v1': { '0': '40' } } });
  });

  it('ends the intact prefix at a corrupt entry (a short write), not only at a torn tail', () => {
    const good = Buffer.concat([rec(0), rec(1)].map(encodeRecord));
    const bad = encodeRecord(rec(2));
    bad.writeUInt8(bad.readUInt8(bad.length - 1) ^ 0xff, bad.length - 1); // a flipped byte: the CRC no longer matches
    const { records, valid } = decodeRecords(Buffer.concat([good, bad, encodeRecord(rec(3))]));
    expect(records.map((r) => Number(r.offset))).toEqual([0, 1]);
    expect(valid).toBe(good.length);
  });

  it('rejects a wait for a record the broker dropped before the journal read it, and times out a wait', async () => {
    const j = Journal.open(dir());
    j.append('t', 0, [rec(0)]);
    const dropped = j.waitFor('t', 0, 2n);
    j.append('t', 0, [rec(5)]); // 1..4 never reached the journal
    await expect(dropped).rejects.toMatchObject({ code: 'HRL_JOURNAL_BEHIND' });
    await expect(j.waitFor('t', 0, 9n, 20)).rejects.toMatchObject({ code: 'HRL_JOURNAL_BEHIND', message: expect.stringContaining('within 20 ms') });
  });
});

