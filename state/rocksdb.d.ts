declare module '@nxtedition/rocksdb' {
  export class RocksLevel {
    constructor(location: string, options?: Record<string, unknown>);
  }
}
