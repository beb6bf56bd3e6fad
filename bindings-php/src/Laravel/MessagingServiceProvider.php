<?php

declare(strict_types=1);

namespace Polybus\Laravel;

use Illuminate\Contracts\Foundation\Application;
use Illuminate\Support\ServiceProvider;
use InvalidArgumentException;
use Polybus\Broker;
use Polybus\Hub;
use Polybus\Laravel\Console\ConsumeCommand;
use Polybus\Laravel\Console\DeadLettersCommand;
use Polybus\MessageBrokerInterface;

/**
 * Binds `Polybus\MessageBrokerInterface` to the broker `config('messaging.driver')` names
 * (redis | kafka | rabbitmq | memory | null), registers `messaging:consume` and
 * `messaging:dlq`, binds `Polybus\Hub` (`messaging.hub.tasks` / `events` drivers), and offers
 * `config/messaging.php` for publishing (`--tag=messaging-config`), and sends the engine's log
 * records to the application's log (`messaging.log_level`). An application overrides
 * the binding with `$this->app->bind(MessageBrokerInterface::class, ...)` in its own provider,
 * or one driver with `BrokerFactory::extend()`.
 */
class MessagingServiceProvider extends ServiceProvider
{
    /**
     * Registers the configuration defaults, the factory and the interface binding.
     */
    public function register(): void
    {
        $this->mergeConfigFrom(self::configPath(), 'messaging');

        $this->app->singleton(
            BrokerFactory::class,
            static fn (Application $app): BrokerFactory => new BrokerFactory((array) $app['config']->get('messaging', [])),
        );
        $this->app->singleton(
            MessageBrokerInterface::class,
            static fn (Application $app): MessageBrokerInterface => $app->make(BrokerFactory::class)->make(),
        );
        $this->app->alias(MessageBrokerInterface::class, 'messaging');
        $this->app->singleton(Hub::class, static function (Application $app): Hub {
            $config = (array) $app['config']->get('messaging', []);
            $default = strtolower((string) ($config['driver'] ?? 'null'));
            $brokers = [];
            $broker = static function (string $driver) use ($app, $default, &$brokers): Broker {
                $driver = strtolower($driver);
                $brokers[$driver] ??= $driver === $default
                    ? $app->make(MessageBrokerInterface::class)
                    : $app->make(BrokerFactory::class)->make($driver);
                if (!$brokers[$driver] instanceof Broker) {
                    throw new InvalidArgumentException(sprintf('The hub needs a Polybus broker for the "%s" driver.', $driver));
                }

                return $brokers[$driver];
            };

            return new Hub(
                $broker((string) ($config['hub']['tasks'] ?? $default)),
                $broker((string) ($config['hub']['events'] ?? $default)),
            );
        });
    }

    /**
     * Offers the configuration file for publishing and registers the console command.
     */
    public function boot(): void
    {
        $this->publishes([self::configPath() => $this->app->configPath('messaging.php')], 'messaging-config');
        // The engine's log records (reconnects, failovers, librdkafka) go to the application's log.
        Broker::setLogger($this->app->make('log'), (string) $this->app['config']->get('messaging.log_level', 'warning'));
        if ($this->app->runningInConsole()) {
            $this->commands([ConsumeCommand::class, DeadLettersCommand::class]);
        }
    }

    /**
     * The package's `config/messaging.php`.
     */
    public static function configPath(): string
    {
        return dirname(__DIR__, 2) . '/config/messaging.php';
    }
}
