/** Stage name -> processor factory. */
import type { StageName } from '../topology.ts';
import type { ChannelProvider } from '../channels/channel.ts';
import type { StageFactory } from '../runtime/contract.ts';
import { dedupe } from './dedupe.ts';
import { deliver } from './deliver.ts';
import { enrich } from './enrich.ts';
import { ingest } from './ingest.ts';
import { outcome } from './outcome.ts';
import { route } from './route.ts';
import { throttle } from './throttle.ts';

/** The processors of every stage; only deliver is given the channels (the one stage with outside effects). */
export function processors(channels: ReadonlyMap<string, ChannelProvider>): { [S in StageName]: StageFactory<S> } {
  return { ingest, enrich, dedupe, throttle, route, deliver: deliver(channels), outcome };
}
