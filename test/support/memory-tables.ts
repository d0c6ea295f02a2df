/** Global tables held in memory, for stage tests. */
import type { TableLookup, TableName } from '../../runtime/contract.ts';

export class MemoryTables implements TableLookup {
  private readonly rows = new Map<TableName, Map<string, unknown>>();

  /** Present with `caughtUp`: the tables then say they hold everything written (as a caught-up GlobalTables does). */
  readonly catchUp?: (tables: readonly TableName[], stampedAt: number) => Promise<boolean>;

  constructor(o: { caughtUp?: boolean } = {}) {
    if (o.caughtUp) this.catchUp = async () => true;
  }

  delete(table: TableName, key: string): this {
    this.rows.get(table)?.delete(key);
    return this;
  }

  set(table: TableName, key: string, value: unknown): this {
    const t = this.rows.get(table) ?? new Map<string, unknown>();
    t.set(key, value);
    this.rows.set(table, t);
    return this;
  }

  async getMany<T>(table: TableName, keys: string[]): Promise<(T | undefined)[]> {
    return keys.map((k) => this.rows.get(table)?.get(k) as T | undefined);
  }

  async *scan<T>(table: TableName, prefix: string): AsyncGenerator<[string, T]> {
    const keys = [...(this.rows.get(table)?.keys() ?? [])].filter((k) => k.startsWith(prefix)).sort();
    for (const k of keys) yield [k, this.rows.get(table)!.get(k) as T];
  }
}
